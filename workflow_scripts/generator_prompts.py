"""Write a task's generator prompt table (one row per synthetic image, with its shard)."""

import pyarrow.parquet as pq

from synret.prompts import generator_prompts
from synret.tasks import read_task
from synret.workflow import run_job


def main(smk, log):
    task = read_task(smk.input.task)
    table = generator_prompts(task["classnames"], smk.params.prompts, smk.params.shard_size)
    pq.write_table(table, smk.output[0])
    log(f"{table.num_rows} prompts, e.g. {table.column('prompt')[0].as_py()!r}")


run_job(snakemake, main, uses_torch=False)
