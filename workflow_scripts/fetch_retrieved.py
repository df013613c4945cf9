"""Download a task's retrieved candidates with img2dataset (serving a local pool over loopback if configured)."""

import contextlib

import pyarrow.parquet as pq

from synret.fetch import download, serve_directory
from synret.workflow import run_job, write_json


def main(smk, log):
    candidates = pq.read_table(smk.input.candidates)
    serve = smk.params.serve
    server = serve_directory(serve["root"], serve["base_url"], log) if serve else contextlib.nullcontext()
    with server, open(smk.log[0], "a") as img2dataset_log:
        manifest, counts = download(candidates, smk.output.download, smk.params.download, log, img2dataset_log)
    pq.write_table(manifest, smk.output.manifest)
    write_json(smk.output.counts, counts)
    log(f"download status: {counts['status']}")


run_job(snakemake, main, uses_torch=False)
