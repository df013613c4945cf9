"""Write one extra evaluation set of a task: its manifest in the task's label space and its class file."""

from synret.eval_sets import build_eval_set
from synret.tasks import read_task
from synret.workflow import run_job


def main(smk, log):
    info = build_eval_set(smk.wildcards.task, smk.wildcards.name, smk.params.definition, read_task(smk.input.task),
                          smk.output.manifest, smk.output.classes)
    log(f"{info['images']} images of {len(info['classes'])} task classes; {info['dropped_images']} of unmapped classes dropped")


run_job(snakemake, main, uses_torch=False)
