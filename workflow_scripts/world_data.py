"""Render the demo world's pool (metadata parts, image files, image array) and benchmark datasets."""

from pathlib import Path

from synret.workflow import run_job, write_json
from synret.world.build import build_world_data


def main(smk, log):
    pool_dir = Path(smk.output.array).parent
    datasets_dir = Path(smk.output.datasets[0]).parent
    summary = build_world_data(smk.params.world, pool_dir, datasets_dir)
    write_json(smk.output.summary, summary)
    log(f"pool of {summary['pool_images']} images, {summary['planted_near_duplicates']} planted near-duplicates")


run_job(snakemake, main, uses_torch=False)
