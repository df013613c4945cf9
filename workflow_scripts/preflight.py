"""Check every model, dataset, pool and index the configuration names; write the marker or fail once."""

from synret.preflight import run_preflight
from synret.workflow import run_job, write_json


def main(smk, log):
    summary = run_preflight(smk.params.spec)
    log(f"all present: {', '.join(summary['checked'])}")
    write_json(smk.output[0], summary)


run_job(snakemake, main, uses_torch=False)
