"""Run one cell of the grid (finetune + evaluate, or zero-shot evaluation) and write its metrics."""

from synret.workflow import run_job


def main(smk, log):
    from pathlib import Path

    import pyarrow.parquet as pq

    from synret.cells import run_cell  # torch: after run_job set the threads
    from synret.eval_sets import read_eval_set
    from synret.resources import loader_workers
    from synret.tasks import read_task
    from synret.workflow import available_cpus, write_json, write_parquet

    task = read_task(smk.input.task)
    wc = smk.wildcards
    splits = {s: pq.read_table(getattr(smk.input, s)).to_pandas() for s in smk.params.evaluate["splits"]}
    selection = None
    if smk.rule == "zeroshot":
        cell, curated, finetune = {"task": wc.task, "source": "zeroshot", "scale": 0, "seed": 0}, None, None
    else:
        selection = smk.params.selection
        cell = {"task": wc.task, "source": wc.source, "size": wc.size, "seed": int(wc.seed),
                "scale": int(wc.size[1:]) if wc.size.startswith("n") else None}
        if selection["how"] == "mix":
            cell["mix"] = selection["ratio"]
        if selection["how"] == "per_class":
            cell["images_per_class"] = selection["per_class"]  # None: all of them
        curated = {Path(p).parent.name: pq.read_table(p).to_pandas() for p in smk.input.curated}
        finetune = smk.params.finetune
    probe_tables = None
    if smk.params.evaluate.get("linear_probe") is not None:  # the task's own splits, for the probe
        probe_tables = {s: pq.read_table(getattr(smk.input, "probe_train" if s == "train" else s)).to_pandas()
                        for s in ("train", "val", "test")}
    # evaluation images are read by the job's threads beyond those it computes on
    workers = loader_workers(smk.threads, smk.params.compute_threads, available_cpus())
    log(f"evaluation images read by {workers} data-loader worker(s)" if workers else "evaluation images read in process")
    eval_sets = {}  # the task's extra evaluation sets (synret.eval_sets)
    for manifest in [f for f in smk.input.eval_sets if f.endswith(".parquet")]:  # each with its .json beside it
        name, table, classes = read_eval_set(manifest)
        eval_sets[name] = (table, classes)
    record, subset, predictions = run_cell(task, cell, smk.params.clip, splits, smk.params.evaluate, curated,
                                           finetune, log, probe_tables, workers, selection, eval_sets)
    if subset is not None:
        write_parquet(subset, smk.output.train_manifest)
    write_parquet(predictions, smk.output.predictions)
    write_json(smk.output.metrics, record)


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
