"""Write a task's generator prompt table (one row per synthetic image, with its shard): template
prompts, or captions from a language model when prompts.llm is set. The prompts' stats (for captions:
where backgrounds and examples came from, the share of captions that name their class) go to the job
log and into the table's schema metadata (key ``synret.prompt_stats``, JSON)."""

import json

import pyarrow.parquet as pq

from synret.tasks import read_task
from synret.workflow import run_job


def main(smk, log):
    from synret.prompts import prompt_table  # torch (through synret.clip): import after run_job set the threads

    task = read_task(smk.input.task)
    table, stats = prompt_table(task["classnames"], smk.params.prompts, smk.params.shard_size, log)
    stats_json = json.dumps(stats, sort_keys=True)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"synret.prompt_stats": stats_json})
    pq.write_table(table, smk.output[0])
    log(f"{table.num_rows} prompts, e.g. {table.column('prompt')[0].as_py()!r}")
    log(f"prompt stats: {stats_json}")


run_job(snakemake, main, uses_torch=bool(snakemake.params.prompts.get("llm")))
