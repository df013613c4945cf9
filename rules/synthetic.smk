# Synthetic sources: each job turns one shard of a task's prompts into a webdataset shard with a
# diffusers pipeline (GPU when there is one). Every synthetic source (a second generator, other
# sampling settings: source_settings) writes its own shards under results/<source>/.


rule synthesize_shard:
    wildcard_constraints:
        generator=one_of([s.name for s in synthetic_sources_of(config)]),
    input:
        prompts="results/prompts/{task}/generator.parquet",
        model=lambda wc: local_input(generator_of(wc)["model"]),
    output:
        shard="results/{generator}/{task}/shard-{shard}.tar",
        manifest="results/{generator}/{task}/shard-{shard}.parquet",
    log:
        "logs/{generator}/{task}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/{generator}/{task}/shard-{shard}.tsv"
    params:
        model=generator_of,
        sampling=lambda wc: canonical(sampling_settings(source(wc.generator, config), config, wc.task)),
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
