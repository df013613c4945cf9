"""Write a task's definition (task.json) and its split manifests."""

from pathlib import Path

from synret.tasks import build_task
from synret.workflow import run_job


def main(smk, log):
    task = build_task(smk.wildcards.task, smk.params.definition, Path(smk.output.task).parent)
    log(f"{len(task['classnames'])} classes; split sizes {task['split_sizes']}")


run_job(snakemake, main, uses_torch=False)
