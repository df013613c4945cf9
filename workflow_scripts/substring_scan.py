"""Match all of a task's substring queries against one metadata part of the pool, in one pass."""

import pyarrow.compute as pc
import pyarrow.parquet as pq

from synret.substring import TermMatcher, scan_parquet
from synret.workflow import run_job


def main(smk, log):
    queries = pq.read_table(smk.input.queries)
    queries = queries.filter(pc.equal(queries.column("kind"), "substring")).to_pylist()
    matcher = TermMatcher((q["label"], q["query"], q["terms"]) for q in queries)
    hits = scan_parquet(smk.input.part, matcher, smk.params.columns)
    pq.write_table(hits, smk.output[0])
    log(f"{len(queries)} queries over {smk.input.part}: {hits.num_rows} hits")


run_job(snakemake, main, uses_torch=False)
