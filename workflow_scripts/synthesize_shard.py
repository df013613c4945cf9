"""Generate one shard of a task's synthetic images."""

from synret.workflow import run_job


def main(smk, log):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synret.synthesize import generate_shard, load_pipeline  # torch: import after run_job set the threads

    prompts = pq.read_table(smk.input.prompts)
    prompts = prompts.filter(pc.equal(prompts.column("shard"), int(smk.wildcards.shard)))
    model, sampling = smk.params.model, smk.params.sampling
    pipe = load_pipeline(model["model"], sampling["scheduler"], dtype=model["dtype"], cache_dir=model["cache_dir"])
    log(f"loaded {model['model']} on {pipe.device}; {prompts.num_rows} prompts")
    stats = generate_shard(pipe, prompts, sampling, smk.output.shard, smk.output.manifest, log=log)
    log(f"{stats}")


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
