"""The data-quality panel of every (task, source) as one table and one figure."""

from synret.workflow import run_job


def main(smk, log):
    import json
    from pathlib import Path

    import pandas as pd

    from synret.aggregate import write_csv
    from synret.quality import plot_quality, quality_rows

    records = {}
    for path in smk.input.quality:
        task, source = Path(path).parts[-3:-1]  # results/quality/<task>/<source>/quality.json
        records[(task, source)] = json.loads(Path(path).read_text())
    table = quality_rows(records, pd.read_csv(smk.input.summary))
    write_csv(table, smk.output.table)
    styles = {name: style for name, style in smk.params.styles.items()}
    plot_quality(table, smk.output.plot, styles)
    log(f"{len(table)} rows")


run_job(snakemake, main, uses_torch=False)
