"""Pass one shard of a curated source's kept images through the generator's image-to-image pipeline."""

from synret.workflow import run_job


def main(smk, log):
    import pyarrow.parquet as pq

    from synret.img2img import img2img_shard, load_img2img_pipeline, selected_images  # torch: after run_job
    from synret.tasks import read_task

    settings, model = smk.params.img2img, smk.params.model
    curated = pq.read_table(smk.input.parent).to_pandas()
    rows = selected_images(curated, settings["images"], settings["shard_size"], int(smk.wildcards.shard))
    pipe = load_img2img_pipeline(model["model"], settings["scheduler"], dtype=model["dtype"],
                                 cache_dir=model["cache_dir"])
    log(f"loaded {model['model']} on {pipe.device}; {len(rows)} of {settings['of']}'s kept images at strength "
        f"{settings['strength']}")
    stats = img2img_shard(pipe, rows, read_task(smk.input.task)["classnames"], settings, smk.output.shard,
                          smk.output.manifest, log=log, key=f"source_settings.{smk.wildcards.source}")
    log(f"{stats}")


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
