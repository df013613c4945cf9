# One job per cell of the grid: finetune on the cell's training images (a nested subset of a curated
# source; k per class of the real source; a mix of two sources at a fixed total), then
# evaluate on the task's val and test splits. Zero-shot cells evaluate the untouched model. With
# evaluate.linear_probe set, a linear probe trained on the task's own train split measures the tower too.
# Images are read in data-loader workers: the threads a job gets beyond those it computes on.


rule finetune:
    input:
        unpack(cell_inputs),  # the images and curated manifests of the sources the cell draws on
        task="results/tasks/{task}/task.json",
        val="results/tasks/{task}/val.parquet",
        test="results/tasks/{task}/test.parquet",
        eval_sets=eval_set_inputs,  # the task's extra evaluation sets (rules/common.smk)
        probe_train=lambda wc: (  # the task's train split, read only by the linear-probe evaluation
            [] if settings_of("evaluate")(wc).get("linear_probe") is None else f"results/tasks/{wc.task}/train.parquet"
        ),
        model=clip_model_input(),
    output:
        metrics="results/cells/{task}/{source}/{size}/seed{seed}/metrics.json",
        predictions="results/cells/{task}/{source}/{size}/seed{seed}/predictions.parquet",
        train_manifest="results/cells/{task}/{source}/{size}/seed{seed}/train_manifest.parquet",
    log:
        "logs/cells/{task}/{source}/{size}/seed{seed}.log",
    benchmark:
        "results/benchmarks/cells/{task}/{source}/{size}/seed{seed}.tsv"
    params:
        finetune=settings_of("finetune"),
        selection=cell_selection,
        evaluate=settings_of("evaluate"),
        clip=clip_params(),
        compute_threads=lambda wc: settings_of("finetune")(wc)["threads"],
    threads: lambda wc: cell_threads(config, wc.task)  # finetune.threads + finetune.num_workers
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "finetune"),
        runtime=sized("runtime", "finetune"),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/finetune.py"


rule zeroshot:
    input:
        task="results/tasks/{task}/task.json",
        val="results/tasks/{task}/val.parquet",
        test="results/tasks/{task}/test.parquet",
        eval_sets=eval_set_inputs,  # the task's extra evaluation sets (rules/common.smk)
        probe_train=lambda wc: (  # the task's train split, read only by the linear-probe evaluation
            [] if settings_of("evaluate")(wc).get("linear_probe") is None else f"results/tasks/{wc.task}/train.parquet"
        ),
        model=clip_model_input(),
    output:
        metrics="results/cells/{task}/zeroshot/metrics.json",
        predictions="results/cells/{task}/zeroshot/predictions.parquet",
    log:
        "logs/cells/{task}/zeroshot.log",
    benchmark:
        "results/benchmarks/cells/{task}/zeroshot.tsv"
    params:
        evaluate=settings_of("evaluate"),
        clip=clip_params(),
        compute_threads=probe_threads,  # only the linear-probe evaluation trains
    threads: lambda wc: cell_threads(config, wc.task)  # as a finetuning cell's: its evaluation reads the same images
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "zeroshot"),
        runtime=sized("runtime", "zeroshot"),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/finetune.py"
