"""A task's sample images: every source's kept and dropped ones beside test images, for the report."""

from synret.workflow import run_job


def main(smk, log):
    from pathlib import Path

    import pyarrow.parquet as pq

    from synret.quality import plot_samples, sample_classes
    from synret.tasks import read_task

    settings = smk.params.report
    task = read_task(smk.input.task)
    sources = {Path(p).parent.name: pq.read_table(p).to_pandas() for p in smk.input.samples}
    classes = sample_classes(len(task["classnames"]), settings["sample_classes"], settings["seed"])
    labels = {name: name for name in sources}  # short names: the caption says what each source is
    plot_samples(task, sources, pq.read_table(smk.input.test).to_pandas(), classes, labels, smk.output[0])
    log(f"{sum(len(s) for s in sources.values())} images of {len(sources)} sources, classes {classes}")


run_job(snakemake, main, uses_torch=False)
