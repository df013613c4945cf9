"""Query the kNN index with every class's text queries (text-to-image and text-to-text): a local
faiss folder (pool.knn_index) or a running clip-retrieval back (pool.knn_service)."""

from synret.workflow import run_job


def main(smk, log):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synret.knn import KnnIndex, knn_hits, service_hits
    from synret.knn_client import KnnServiceClient

    queries = pq.read_table(smk.input.queries)
    queries = queries.filter(pc.equal(queries.column("kind"), "knn"))
    knn = smk.params.knn
    service = knn.get("service")
    texts, labels = queries.column("query").to_pylist(), queries.column("label").to_pylist()
    emb = None
    if service is None or service["query"] == "embedding":
        from synret.clip import encode_texts, load_clip  # torch: import after run_job set the threads

        m = smk.params.model
        emb = encode_texts(load_clip(m["model"], m["pretrained"], cache_dir=m["cache_dir"]), texts).numpy()
    if service is None:
        hits = knn_hits(KnnIndex(smk.input.index), emb, labels, texts, knn["modalities"], knn["k"],
                        smk.params.columns, knn.get("nprobe"), knn.get("deduplicate", False))
    else:
        client = KnnServiceClient(service["url"], service["indice_name"], timeout=service["timeout"],
                                  retries=service["retries"], deduplicate=knn.get("deduplicate", False))
        columns = {**smk.params.columns, **(service["columns"] or {})}
        hits = service_hits(client, emb, labels, texts, knn["modalities"], knn["k"], columns, service["parallel"], log)
        log(f"kNN service {client.url} (index {service['indice_name']!r}, {service['query']} queries)")
    pq.write_table(hits, smk.output[0])
    log(f"{len(texts)} queries x {knn['modalities']} x k={knn['k']}: {hits.num_rows} hits")


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
