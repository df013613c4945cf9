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
# the task's label space, evaluated by every cell of the task.

from synret.config import eval_sets_of


def eval_set_definition(wildcards):
    return eval_sets_of(config, wildcards.task)[wildcards.name]


def eval_set_dataset_input(wildcards):
    """What a set's job reads: a dataset the demo world makes (its rule's output), else the dataset's files."""
    dataset = eval_set_definition(wildcards)["dataset"]
    return [dataset["root"]] if produced_by_world(config, dataset["root"]) else dataset_inputs(dataset)


def eval_set_inputs(wildcards):
    """Every extra evaluation set's manifest and class file of the job's task (none: an empty list)."""
    return [f"results/tasks/{wildcards.task}/eval/{name}.{ext}"
            for name in eval_sets_of(config, wildcards.task) for ext in ("parquet", "json")]


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
