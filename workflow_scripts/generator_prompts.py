"""Write a task's generator prompt table (one row per synthetic image, with its shard): template
prompts, or captions from a language model when prompts.llm is set."""

import pyarrow.parquet as pq

from synret.tasks import read_task
from synret.workflow import run_job


def main(smk, log):
    from synret.prompts import prompt_table  # torch (through synret.clip): import after run_job set the threads

    task = read_task(smk.input.task)
    table, stats = prompt_table(task["classnames"], smk.params.prompts, smk.params.shard_size, log)
    pq.write_table(table, smk.output[0])
    log(f"{table.num_rows} prompts ({stats}), e.g. {table.column('prompt')[0].as_py()!r}")


run_job(snakemake, main, uses_torch=bool(snakemake.params.prompts.get("llm")))
