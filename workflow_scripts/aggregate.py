"""Collect every cell into the results tables (with intervals, paired comparisons and exchange rates
against the real source) and draw the figures."""

from synret.aggregate import (
    Predictions,
    bootstrap_config,
    clip_benchmark_results,
    collect,
    compare,
    eval_set_tables,
    exchange_table,
    plot_mix,
    plot_paired,
    plot_summary,
    plot_task,
    read_metrics,
    source_table,
    summarize,
    with_cell_intervals,
    with_extra_columns,
    write_csv,
)
from synret.tasks import read_task
from synret.workflow import run_job


def main(smk, log):
    grid = smk.params.grid
    bootstrap = bootstrap_config(smk.params.bootstrap)
    n_classes = {task: len(read_task(path)["classnames"]) for task, path in zip(grid["tasks"], smk.input.tasks)}

    table = collect(smk.input.metrics, expected=grid["cells"])
    keys = [(m["task"], m["source"], m["scale"], m["seed"]) for m in read_metrics(smk.input.metrics)]
    files = {}
    for key, path in zip(keys, smk.input.predictions):  # a real kall that is its k-cell counts once (see collect)
        files.setdefault(key, path)
    preds = Predictions(files, n_classes)
    table = with_cell_intervals(table, preds, bootstrap)
    summary = summarize(table, preds, bootstrap)
    paired = compare(table, preds, grid["sources"], bootstrap)
    # the tasks' extra evaluation sets (e.g. under shift): their columns, and a figure per task and set
    table, set_columns, set_summaries = eval_set_tables(table, files, n_classes,
                                                        smk.params.eval_sets, bootstrap)
    summary = with_extra_columns(summary, set_columns)
    write_csv(table, smk.output.table)
    write_csv(summary, smk.output.summary_table)
    write_csv(paired, smk.output.paired_table)
    write_csv(exchange_table(table, preds, grid["real"], bootstrap), smk.output.exchange_table)
    curated = [(task, source) for task in grid["tasks"] for source in grid["curated"]]
    write_csv(source_table(dict(zip(curated, smk.input.curated)), table), smk.output.sources_table)

    lines = summary[~summary["source"].isin(grid["mixes"])]  # a mix is one point a total: its own plot
    for task, path in zip(grid["tasks"], smk.output.plots):
        plot_task(lines, task, path, styles=grid["styles"])
    for task, path in zip(grid["tasks"], smk.output.mix_plots):
        plot_mix(summary, task, grid["mixes"], path)
    plot_summary(lines, grid["tasks"], smk.output.summary, styles=grid["styles"])
    pairs = [(task, name) for task in grid["tasks"] for name in smk.params.eval_sets.get(task, [])]
    set_lines = {name: s[~s["source"].isin(grid["mixes"])] for name, s in set_summaries.items()}
    for (task, name), path in zip(pairs, smk.output.eval_set_plots):
        plot_task(set_lines[name], task, path, title=f"{task}: eval set {name}", styles=grid["styles"])
    later, earlier = grid["contrast"]
    plot_paired(paired, grid["tasks"], smk.output.paired, later, earlier)
    clip_benchmark_results(smk.input.metrics, smk.output.clip_benchmark, smk.params.clip)  # its JSON, for its `build`
    short = summary[summary["short"]]
    for row in short.itertuples():
        log(f"short: {row.task}/{row.source} at scale {row.scale} trained on {row.n_train:g} images")
    log(f"{len(table)} cells, {len(summary)} points, {len(paired)} paired comparisons")


run_job(snakemake, main, uses_torch=False)
