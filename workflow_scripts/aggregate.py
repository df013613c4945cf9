"""Collect every cell into the results tables (with intervals and paired comparisons) and draw the figures."""

from synret.aggregate import (
    Predictions,
    bootstrap_config,
    clip_benchmark_results,
    collect,
    compare,
    eval_set_tables,
    expected_cells,
    plot_paired,
    plot_summary,
    plot_task,
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
    cells = expected_cells(grid["tasks"], grid["sources"], grid["scales"], grid["seeds"])
    bootstrap = bootstrap_config(smk.params.bootstrap)
    n_classes = {task: len(read_task(path)["classnames"]) for task, path in zip(grid["tasks"], smk.input.tasks)}

    table = collect(smk.input.metrics, expected=cells)
    preds = Predictions(dict(zip(cells, smk.input.predictions)), n_classes)
    table = with_cell_intervals(table, preds, bootstrap)
    summary = summarize(table, preds, bootstrap)
    paired = compare(table, preds, grid["sources"], bootstrap)
    # the tasks' extra evaluation sets (e.g. under shift): their columns, and a figure per task and set
    table, set_columns, set_summaries = eval_set_tables(table, dict(zip(cells, smk.input.predictions)), n_classes,
                                                        smk.params.eval_sets, bootstrap)
    summary = with_extra_columns(summary, set_columns)
    write_csv(table, smk.output.table)
    write_csv(summary, smk.output.summary_table)
    write_csv(paired, smk.output.paired_table)
    sources = [(task, source) for task in grid["tasks"] for source in grid["sources"]]
    write_csv(source_table(dict(zip(sources, smk.input.curated)), table), smk.output.sources_table)

    for task, path in zip(grid["tasks"], smk.output.plots):
        plot_task(summary, task, path)
    plot_summary(summary, grid["tasks"], smk.output.summary)
    pairs = [(task, name) for task in grid["tasks"] for name in smk.params.eval_sets.get(task, [])]
    for (task, name), path in zip(pairs, smk.output.eval_set_plots):
        plot_task(set_summaries[name], task, path, title=f"{task}: eval set {name}")
    later, earlier = (grid["sources"][-1], grid["sources"][0]) if len(grid["sources"]) > 1 else (grid["sources"][0], "zeroshot")
    plot_paired(paired, grid["tasks"], smk.output.paired, later, earlier)
    clip_benchmark_results(smk.input.metrics, smk.output.clip_benchmark, smk.params.clip)  # its JSON, for its `build`
    short = summary[summary["short"]]
    for row in short.itertuples():
        log(f"short: {row.task}/{row.source} at scale {row.scale} trained on {row.n_train:g} images")
    log(f"{len(table)} cells, {len(summary)} points, {len(paired)} paired comparisons")


run_job(snakemake, main, uses_torch=False)
