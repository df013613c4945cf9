# Synthetic arm: each job turns one shard of a task's prompts into a webdataset shard with the
# diffusers pipeline (GPU when there is one).


rule synthesize_shard:
    input:
        prompts="results/prompts/{task}/generator.parquet",
        model=local_input(config["generator"]["model"]),
    output:
        shard="results/synthetic/{task}/shard-{shard}.tar",
        manifest="results/synthetic/{task}/shard-{shard}.parquet",
    log:
        "logs/synthetic/{task}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/synthetic/{task}/shard-{shard}.tsv"
    params:
        model=canonical(config["generator"]),
        sampling=settings_of("synthetic"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "synthesize_shard"),
        runtime=sized("runtime", "synthesize_shard"),
    priority: 5
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/synthesize_shard.py"
