# The demo world (only when config has `world`): the upstream pool with its images on disk, the
# benchmark datasets, a tiny CLIP and a tiny Stable-Diffusion-style pipeline trained on the pool, and
# kNN indices over it. Everything later reads these through the same keys a real setup uses
# (clip.model, generator.model, pool.*, task_settings.*.dataset).

if WORLD:

    rule world_data:
        output:
            metadata=expand("results/world/pool/metadata/part-{i:05d}.parquet", i=range(WORLD["pool"]["parts"])),
            images=directory("results/world/pool/images"),
            array="results/world/pool/images.npy",
            summary="results/world/pool/summary.json",
            datasets=[directory(f"results/world/datasets/{name}") for name in sorted(WORLD["datasets"])],
        log:
            "logs/world/data.log",
        benchmark:
            "results/benchmarks/world/data.tsv"
        params:
            world=canonical({k: WORLD[k] for k in ("seed", "image_size", "base_url", "pool", "pool_style", "benchmark_style", "datasets")}),
        threads: 2
        resources:
            mem_mb=sized("mem_mb", "world"),
            runtime=sized("runtime", "world"),
        conda:
            "../envs/synret.yaml"
        script:
            "../workflow_scripts/world_data.py"

    rule world_clip:
        input:
            array=rules.world_data.output.array,
            metadata=rules.world_data.output.metadata,
        output:
            directory("results/world/clip"),
        log:
            "logs/world/clip.log",
        benchmark:
            "results/benchmarks/world/clip.tsv"
        params:
            train=canonical({**WORLD["clip"], "seed": WORLD["seed"]}),
            compute_threads=WORLD["threads"],
        threads: 8  # on a small machine it takes every core: other jobs would only slow this critical one
        resources:
            mem_mb=sized("mem_mb", "world"),
            runtime=sized("runtime", "world"),
        priority: 10
        conda:
            "../envs/synret.yaml"
        script:
            "../workflow_scripts/world_clip.py"

    rule world_generator:
        input:
            array=rules.world_data.output.array,
            metadata=rules.world_data.output.metadata,
            clip=rules.world_clip.output,
        output:
            generator=directory("results/world/generator"),
            # earlier states of its training (world.generator.snapshots), e.g. a less trained second generator
            snapshots=[directory(f"results/world/generator_{name}") for name in sorted(WORLD["generator"].get("snapshots") or {})],
        log:
            "logs/world/generator.log",
        benchmark:
            "results/benchmarks/world/generator.tsv"
        params:
            train=canonical({"seed": WORLD["seed"], **WORLD["generator"]}),
            compute_threads=WORLD["threads"],
        threads: 8
        resources:
            mem_mb=sized("mem_mb", "world"),
            runtime=sized("runtime", "world"),
        priority: 10
        conda:
            "../envs/synret.yaml"
        script:
            "../workflow_scripts/world_generator.py"

    rule world_index:
        input:
            array=rules.world_data.output.array,
            metadata=rules.world_data.output.metadata,
            clip=rules.world_clip.output,
        output:
            directory("results/world/index"),
        log:
            "logs/world/index.log",
        benchmark:
            "results/benchmarks/world/index.tsv"
        params:
            factory=WORLD["index"]["factory"],
            caption_column=config["pool"]["columns"]["caption"],
        threads: 8  # like the CLIP and generator: the retrieval arm waits for it, so it gets every core
        priority: 20  # before the generator: it needs only the CLIP and takes a fraction of the time
        resources:
            mem_mb=sized("mem_mb", "world"),
            runtime=sized("runtime", "world"),
        conda:
            "../envs/synret.yaml"
        script:
            "../workflow_scripts/world_index.py"

    if WORLD.get("shifted"):
        from synret.config import shifted_params

        # each dataset's shifted test set (world.shifted), in CLIP_benchmark's webdataset layout: the demo's
        # stand-in for ImageNet-R/-Sketch & co., read through the task format clip_benchmark as they are
        rule world_shifted:
            output:
                directory("results/world/shifted/{dataset}"),
            wildcard_constraints:
                dataset=one_of(WORLD["datasets"]),
            log:
                "logs/world/shifted/{dataset}.log",
            params:
                world=lambda wc: shifted_params(WORLD, wc.dataset),
            conda:
                "../envs/synret.yaml"
            script:
                "../workflow_scripts/world_shifted.py"
