# Tasks: class names, templates and split manifests, written once and read by every later stage.

from synret.config import dataset_inputs


rule task:
    input:
        dataset=lambda wildcards: dataset_inputs(task_definition(config, wildcards.task)["dataset"]),
        preflight=[] if WORLD else ancient("results/preflight.json"),
    output:
        task="results/tasks/{task}/task.json",
        train="results/tasks/{task}/train.parquet",
        val="results/tasks/{task}/val.parquet",
        test="results/tasks/{task}/test.parquet",
    log:
        "logs/tasks/{task}.log",
    params:
        definition=task_definition_of,
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/task.py"
