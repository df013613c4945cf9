"""Write a task's retrieval queries: kNN text queries and substring alternatives per class."""

import pyarrow.parquet as pq

from synret.prompts import retrieval_queries
from synret.tasks import read_task
from synret.workflow import run_job


def main(smk, log):
    substring = smk.params.substring
    table = retrieval_queries(read_task(smk.input.task), substring.get("rewrite", "none"), substring.get("templates"))
    pq.write_table(table, smk.output[0])
    log(f"{table.num_rows} queries")


run_job(snakemake, main, uses_torch=False)
