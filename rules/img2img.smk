# img2img sources: each job passes one shard of a curated source's kept images (the first `images` of its
# nested order; retrieved by default) through the generator's image-to-image pipeline at the source's
# strength, and writes a webdataset shard like a synthetic one under results/<source>/. The shards are then
# curated like every source's (rules/curate.smk).


rule img2img_shard:
    wildcard_constraints:
        source=one_of([s.name for s in img2img_sources_of(config)]),
    input:
        unpack(img2img_inputs),  # the parent's curated manifest and its images
        task="results/tasks/{task}/task.json",
        model=lambda wc: local_input(generator_of(wc)["model"]),
    output:
        shard="results/{source}/{task}/shard-{shard}.tar",
        manifest="results/{source}/{task}/shard-{shard}.parquet",
    log:
        "logs/{source}/{task}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/{source}/{task}/shard-{shard}.tsv"
    params:
        model=generator_of,
        img2img=img2img_of,
    threads: 2
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "img2img_shard"),
        runtime=sized("runtime", "img2img_shard"),
    priority: 5
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/img2img_shard.py"
