# Curate each source of each task: CLIP-score filtering per class and dedup against the task's
# evaluation images (every source alike), with a per-image manifest of what was kept and why not.
# The real source (the task's own training images) is kept as it is; a mixed source has no curated
# set of its own (its cells draw on the two it mixes).


rule curate:
    wildcard_constraints:
        source=curated_names("clip"),
    input:
        unpack(source_images),
        task="results/tasks/{task}/task.json",
        train="results/tasks/{task}/train.parquet",
        val="results/tasks/{task}/val.parquet",
        test="results/tasks/{task}/test.parquet",
        model=clip_model_input(),
        dedup_weights=lambda wc: local_input(isc_weights_of(config, wc.task)),  # a new file reruns curation
    output:
        manifest="results/curated/{task}/{source}/manifest.parquet",
        summary="results/curated/{task}/{source}/summary.json",
    log:
        "logs/curate/{task}/{source}.log",
    benchmark:
        "results/benchmarks/curate/{task}/{source}.tsv"
    params:
        curate=curate_params,
        clip=clip_params(),
        source=source_kind,
    threads: lambda wc: curate_threads(config, wc.task)  # 1 + curate.num_workers (data-loader workers)
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "curate"),
        runtime=sized("runtime", "curate"),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/curate.py"


rule curate_real:
    wildcard_constraints:
        source=curated_names("all"),
    input:
        task="results/tasks/{task}/task.json",
        train="results/tasks/{task}/train.parquet",
    output:
        manifest="results/curated/{task}/{source}/manifest.parquet",
        summary="results/curated/{task}/{source}/summary.json",
    log:
        "logs/curate/{task}/{source}.log",
    params:
        source=source_kind,
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/curate_real.py"
