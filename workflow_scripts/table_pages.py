"""The report's table pages: the tables a reader wants beside the figures, as HTML the report shows."""

from synret.workflow import run_job


def main(smk, log):
    import pandas as pd

    from synret.table_pages import write_page

    summary = pd.read_csv(smk.input.summary)
    extra = [c for c in summary.columns if c.startswith("top1_") and c not in ("top1_lo", "top1_hi", "top1_seed_sd")]
    write_page(smk.output.results, "Results", [
        ("Accuracy per point", "Each (task, source, scale) over its seeds: mean top-1 on the test split with a 95% "
         "interval over test images and seeds; n_train: the images a cell trained on; short: the source could "
         "not supply the scale.", summary,
         ["task", "source", "scale", "seeds", "n_train", "short", "top1", "top1_lo", "top1_hi", "top1_seed_sd",
          "mean_per_class", *extra]),
        ("Paired differences", "a minus b on the same test images, per scale (seed: 'all' pools the seeds), with a "
         "95% paired-bootstrap interval and McNemar's exact p per seed.", pd.read_csv(smk.input.paired), None),
    ])
    quality = pd.read_csv(smk.input.quality)
    write_page(smk.output.quality, "Data quality", [
        ("The data-quality panel", "On the kept images of each curated set; *_real: the same measure on the task's "
         "own training images. Label fidelity: the share assigned to their label by the task's zero-shot CLIP "
         "(none for a source labelled by it) and, on the demo world, by the ground truth the pool knows (none for "
         "generated images). Within-class similarity: 1 = all alike. Vendi: effective number of distinct images "
         "among vendi_images_per_class. Frechet: to the test images' CLIP embeddings. top1 at the largest scale.",
         quality, None),
        ("Curation per source", "Candidates, kept, shortfall against the grid's largest scale, images dropped by "
         "reason, planted copies of evaluation images removed.", pd.read_csv(smk.input.sources), None),
    ])
    data = pd.read_csv(smk.input.compute_data)
    per_source = data.groupby(["task", "source"], sort=False).agg(
        jobs=("jobs", "sum"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), gpu_s=("gpu_s", "sum"),
        kept=("kept", "first")).reset_index()
    per_source["cpu_s_per_kept_image"] = per_source["cpu_s"] / per_source["kept"]
    cells = pd.read_csv(smk.input.compute)
    per_point = cells.groupby(["task", "source", "scale"], sort=True)[
        ["top1", "train_cpu_s", "data_cpu_s", "total_cpu_s", "total_wall_s", "total_gpu_s"]].mean().reset_index()
    write_page(smk.output.compute, "Compute", [
        ("Data, per source", "Generation, retrieval, download and curation together (wall, CPU and GPU seconds from "
         "the jobs' records and logs), and per kept image.", per_source, None),
        ("Data, per stage", "The same by stage.", data, None),
        ("Per point", "Mean over seeds: the cell's own job and its share of the data it trained on.", per_point, None),
    ])
    log("3 pages")


run_job(snakemake, main, uses_torch=False)
