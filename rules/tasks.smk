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


# Extra evaluation sets of a task (task_settings.<task>.eval_sets; synret.eval_sets): each set's images in
# the task's label space, evaluated by every cell of the task (input functions in rules/common.smk).


rule eval_set:
    input:
        task="results/tasks/{task}/task.json",
        dataset=eval_set_dataset_input,
        preflight=[] if WORLD else ancient("results/preflight.json"),
    output:
        manifest="results/tasks/{task}/eval/{name}.parquet",
        classes="results/tasks/{task}/eval/{name}.json",
    wildcard_constraints:
        name=r"[A-Za-z0-9_-]+",
    log:
        "logs/tasks/{task}/eval/{name}.log",
    params:
        definition=eval_set_definition,
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/eval_set.py"
