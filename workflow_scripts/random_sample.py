"""Draw a task's untargeted random sample of the pool (candidates without labels: curation labels them)."""

import pyarrow.parquet as pq

from synret.retrieve import random_pool_sample
from synret.workflow import run_job, write_json


def main(smk, log):
    sample = smk.params.sample
    candidates, counts = random_pool_sample(list(smk.input.parts), smk.params.columns, sample["pool_sample"],
                                            sample["seed"], smk.params.drop_nsfw)
    pq.write_table(candidates, smk.output.candidates)
    write_json(smk.output.counts, counts)
    log(f"drew {counts['candidates']} of {counts['pool_rows']} pool rows ({counts['nsfw_dropped']} NSFW rows never drawn)")


run_job(snakemake, main, uses_torch=False)
