"""Collect every cell's metrics into the results table and draw the figures."""

from synret.aggregate import collect, plot_summary, plot_task
from synret.workflow import run_job


def main(smk, log):
    table = collect(smk.input, expected_rows=len(smk.input))
    table.to_csv(smk.output.table, index=False)
    for task, path in zip(smk.params.tasks, smk.output.plots):
        plot_task(table, task, path)
    plot_summary(table, smk.params.tasks, smk.output.summary)
    log(f"{len(table)} rows")


run_job(snakemake, main, uses_torch=False)
