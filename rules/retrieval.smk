# Retrieved source (and the random source's pool sample): CLIP kNN search (text-to-image and text-to-text) over a faiss index in
# clip-retrieval's layout, caption matching over the pool's metadata parts (one job per part), the
# union of the hits without NSFW rows, and the download of their URLs with img2dataset. With
# pool.knn_service set, the kNN searches go to a running `clip-retrieval back` instead of a local index.

from synret.knn_client import knn_settings
from synret.sources import random_settings


rule knn_query:
    input:
        queries="results/prompts/{task}/queries.parquet",
        index=config["pool"].get("knn_index") or [],
        model=clip_model_input(knn_model()),
    output:
        "results/retrieval/{task}/knn_hits.parquet",
    log:
        "logs/retrieval/{task}/knn.log",
    benchmark:
        "results/benchmarks/retrieval/{task}/knn.tsv"
    params:
        knn=lambda wildcards: knn_settings(retrieval_setting("knn")(wildcards), config["pool"]),
        model=knn_model_params(),
        columns=pool_columns(config),
    threads: 2
    resources:
        mem_mb=sized("mem_mb", "knn_query"),
        runtime=sized("runtime", "knn_query"),
    priority: 5  # as synthesis: the retrieved arm's chain is as long, and downloads overlap compute
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/knn_query.py"


rule substring_scan:
    input:
        queries="results/prompts/{task}/queries.parquet",
        part=pool_part,
    output:
        "results/retrieval/{task}/substring/{part}.parquet",
    log:
        "logs/retrieval/{task}/substring-{part}.log",
    benchmark:
        "results/benchmarks/retrieval/{task}/substring-{part}.tsv"
    params:
        columns=pool_columns(config),
    resources:
        mem_mb=sized("mem_mb", "substring_scan"),
        runtime=sized("runtime", "substring_scan"),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/substring_scan.py"


rule retrieval_candidates:
    input:
        unpack(retrieval_hit_inputs),
    output:
        candidates="results/retrieval/{task}/candidates.parquet",
        counts="results/retrieval/{task}/candidates.json",
    log:
        "logs/retrieval/{task}/candidates.log",
    benchmark:
        "results/benchmarks/retrieval/{task}/candidates.tsv"
    params:
        drop_nsfw=retrieval_setting("drop_nsfw"),
        max_per_class=retrieval_setting("max_candidates_per_class"),
    priority: 5
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/retrieval_candidates.py"


rule fetch_retrieved:
    # the retrieved source's candidates (results/retrieval/) and each random source's (results/<source>/)
    wildcard_constraints:
        fetched=one_of(["retrieval", *(s.name for s in random_sources_of(config))]),
    input:
        candidates="results/{fetched}/{task}/candidates.parquet",
        served=serve_input(),
    output:
        download=directory("results/{fetched}/{task}/download"),
        manifest="results/{fetched}/{task}/download_manifest.parquet",
        counts="results/{fetched}/{task}/download.json",
    log:
        "logs/{fetched}/{task}/fetch.log",
    benchmark:
        "results/benchmarks/{fetched}/{task}/fetch.tsv"
    params:
        download=retrieval_setting("download"),
        serve=serve_settings(config),
    threads: 2
    resources:
        mem_mb=sized("mem_mb", "fetch_retrieved"),
        runtime=sized("runtime", "fetch_retrieved"),
    priority: 5  # as synthesis: the retrieved arm's chain is as long, and downloads overlap compute
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/fetch_retrieved.py"


rule random_sample:
    # a random source: an untargeted sample of the pool, labelled later by the task's zero-shot CLIP
    wildcard_constraints:
        sampled=one_of([s.name for s in random_sources_of(config)]),
    input:
        parts=pool_parts(),
    output:
        candidates="results/{sampled}/{task}/candidates.parquet",
        counts="results/{sampled}/{task}/candidates.json",
    log:
        "logs/{sampled}/{task}/sample.log",
    benchmark:
        "results/benchmarks/{sampled}/{task}/sample.tsv"
    params:
        sample=lambda wc: canonical(random_settings(source(wc.sampled, config), config)),
        columns=pool_columns(config),
        drop_nsfw=retrieval_setting("drop_nsfw"),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/random_sample.py"
