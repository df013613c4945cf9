"""Query the kNN index with every class's text queries (text-to-image and text-to-text)."""

import pyarrow.compute as pc
import pyarrow.parquet as pq

from synret.knn import KnnIndex, knn_hits
from synret.workflow import run_job


def main(smk, log):
    from synret.clip import encode_texts, load_clip  # torch: import after run_job set the threads

    queries = pq.read_table(smk.input.queries)
    queries = queries.filter(pc.equal(queries.column("kind"), "knn"))
    knn = smk.params.knn
    clip = load_clip(smk.params.model)
    texts = queries.column("query").to_pylist()
    hits = knn_hits(KnnIndex(smk.input.index), encode_texts(clip, texts).numpy(), queries.column("label").to_pylist(),
                    texts, knn["modalities"], knn["k"], smk.params.columns, knn.get("nprobe"))
    pq.write_table(hits, smk.output[0])
    log(f"{len(texts)} queries x {knn['modalities']} x k={knn['k']}: {hits.num_rows} hits")


run_job(snakemake, main)
