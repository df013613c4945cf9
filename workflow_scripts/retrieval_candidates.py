"""Union the kNN and substring hits of a task, drop NSFW-tagged rows, one row per (class, pool item)."""

import pyarrow as pa
import pyarrow.parquet as pq

from synret.retrieve import merge_candidates
from synret.workflow import run_job, write_json


def main(smk, log):
    knn = pq.read_table(smk.input.knn) if "knn" in smk.input.keys() else None
    parts = smk.input.get("substring", [])
    substring = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None
    candidates, counts = merge_candidates(knn, substring, smk.params.drop_nsfw, smk.params.max_per_class)
    pq.write_table(candidates, smk.output.candidates)
    write_json(smk.output.counts, counts)
    log(f"{counts['candidates']} candidates from {counts['hits']} hits ({counts['nsfw_dropped_hits']} NSFW hits dropped)")


run_job(snakemake, main, uses_torch=False)
