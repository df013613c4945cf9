"""The data-quality panel of one curated set, and the sample images the report shows of it."""

from synret.workflow import run_job


def main(smk, log):
    import json

    import pyarrow.parquet as pq

    from synret.cells import resolve_precision
    from synret.clip import load_clip, zero_shot_weights  # torch: import after run_job set the threads
    from synret.embed import embed_images
    from synret.quality import data_quality, pick_samples, sample_classes, samples_table, world_truth
    from synret.resources import loader_workers
    from synret.synthesize import pick_device
    from synret.tasks import read_task
    from synret.workflow import available_cpus, write_json

    settings, kind = smk.params.report, smk.params.source["kind"]
    task = read_task(smk.input.task)
    manifest = pq.read_table(smk.input.curated).to_pandas()
    summary = json.loads(open(smk.input.curated_summary).read())
    device = pick_device()
    clip = load_clip(smk.params.clip["model"], smk.params.clip["pretrained"], device=device,
                     cache_dir=smk.params.clip["cache_dir"])
    precision = resolve_precision(smk.params.clip["precision"], device)
    workers = loader_workers(smk.threads, cpus=available_cpus())

    def embed(items):
        return embed_images(clip, items, device=device, precision=precision, num_workers=workers)

    zeroshot = zero_shot_weights(clip, task["classnames"], task.get("templates") or task["filter_templates"],
                                 device=device).numpy()
    truth = None
    if smk.params.truth:
        truth = world_truth(list(smk.input.pool), smk.params.truth["factors"], smk.params.url_column)
        log(f"ground truth of {len(truth)} pool images (the world's {', '.join(smk.params.truth['factors'])})")
    quality = data_quality(
        manifest, summary, kind, embed, pq.read_table(smk.input.train).to_pandas(),
        pq.read_table(smk.input.test).to_pandas(), len(task["classnames"]), settings["vendi_images_per_class"],
        zeroshot, truth=truth, seed=settings["seed"])
    write_json(smk.output.quality, quality)
    log(f"{quality['kept']} kept images: zero-shot label fidelity {quality['label_fidelity_zeroshot']}, "
        f"within-class similarity {quality['within_class_similarity']}, Frechet distance to test "
        f"{quality['frechet_to_test']}")
    classes = sample_classes(len(task["classnames"]), settings["sample_classes"], settings["seed"])
    samples = pick_samples(manifest, classes, settings["kept_per_class"], settings["dropped_per_class"],
                           settings["seed"])
    pq.write_table(samples_table(samples), smk.output.samples)
    log(f"{len(samples)} sample images of classes {classes}")


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
