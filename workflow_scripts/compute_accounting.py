"""What each source's data and each cell cost, from the jobs' benchmark records and logs."""

from synret.workflow import run_job


def main(smk, log):
    import json
    from pathlib import Path

    import pandas as pd

    from synret.aggregate import write_csv
    from synret.compute import cell_table, data_table, plot_compute

    plan = smk.params.plan
    kept = {}
    for path in smk.input.curated:  # results/curated/<task>/<source>/summary.json
        task, source = Path(path).parts[-3:-1]
        kept[(task, source)] = json.loads(Path(path).read_text())["kept"]
    data = data_table(plan, kept)
    write_csv(data, smk.output.data)
    table = pd.read_csv(smk.input.table)
    zeroshot = table[table["source"] == "zeroshot"].groupby("task")["top1"].mean().to_dict()
    cells = table[table["source"] != "zeroshot"]
    costs = cell_table(cells, data, lambda c: f"{c.task}/{c.source}/{c.size}/seed{c.seed}")
    write_csv(costs, smk.output.cells)
    plot_compute(costs, smk.params.tasks, smk.output.plot, smk.params.styles, zeroshot=zeroshot)
    log(f"{len(data)} data rows, {len(costs)} cells")


run_job(snakemake, main, uses_torch=False)
