"""Filter and dedup one source of a task; write its per-image manifest and a summary."""

from synret.workflow import run_job


def main(smk, log):
    import pandas as pd
    import pyarrow.parquet as pq

    from synret.tasks import read_task
    from synret.workflow import write_json
    from synret.cells import resolve_precision
    from synret.clip import load_clip  # torch: import after run_job set the threads
    from synret.curate import curate
    from synret.resources import loader_workers
    from synret.sources import CANDIDATES
    from synret.synthesize import pick_device
    from synret.workflow import available_cpus

    manifests = smk.input.manifests if isinstance(smk.input.manifests, list) else [smk.input.manifests]
    listed = pd.concat([pq.read_table(p).to_pandas() for p in manifests], ignore_index=True)
    rows = CANDIDATES[smk.params.source["kind"]](listed, smk.wildcards.source)
    cfg = smk.params.curate
    evals = pd.concat([pq.read_table(getattr(smk.input, split)).to_pandas() for split in cfg["dedup"]["splits"]],
                      ignore_index=True)
    device = pick_device()
    clip = load_clip(smk.params.clip["model"], smk.params.clip["pretrained"], device=device,
                     cache_dir=smk.params.clip["cache_dir"])
    precision = resolve_precision(smk.params.clip["precision"], device)
    workers = loader_workers(smk.threads, cpus=available_cpus())  # one thread drives the model, the rest decode
    log(f"images decoded by {workers} data-loader worker(s)" if workers else "images decoded in process")
    manifest, summary = curate(rows, read_task(smk.input.task), clip, evals, cfg, device=device, log=log,
                               precision=precision, num_workers=workers)
    pq.write_table(manifest, smk.output.manifest)
    write_json(smk.output.summary, summary)
    log(f"kept {summary['kept']} of {summary['candidates']}; dropped {summary['dropped']}")


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
