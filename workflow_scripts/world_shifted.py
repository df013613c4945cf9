"""Render one demo-world dataset's shifted test set, in CLIP_benchmark's webdataset layout."""

from synret.workflow import run_job
from synret.world.build import build_shifted_set


def main(smk, log):
    summary = build_shifted_set(smk.params.world, smk.wildcards.dataset, smk.output[0])
    log(f"{summary['images']} images of {summary['classes']} classes")


run_job(snakemake, main, uses_torch=False)
