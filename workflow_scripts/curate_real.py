"""The real source's curated manifest: the task's own training images, every one kept."""

from synret.workflow import run_job


def main(smk, log):
    import pyarrow.parquet as pq

    from synret.curate import keep_all
    from synret.sources import CANDIDATES
    from synret.tasks import read_task
    from synret.workflow import write_json

    train = pq.read_table(smk.input.train).to_pandas()
    if not len(train):
        raise ValueError(f"{smk.input.train}: the task has no training images for source {smk.wildcards.source!r}")
    rows = CANDIDATES[smk.params.source["kind"]](train, smk.wildcards.source)
    manifest, summary = keep_all(rows, read_task(smk.input.task))
    pq.write_table(manifest, smk.output.manifest)
    write_json(smk.output.summary, summary)
    log(f"{summary['kept']} training images, {min(summary['kept_per_class'])}-{max(summary['kept_per_class'])} per class")


run_job(snakemake, main, uses_torch=False)
