"""Contrastively pretrain the demo world's tiny CLIP on the pool."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synret.workflow import run_job, write_json


def main(smk, log):
    from synret.world.clip_train import ClipTrainConfig, train_clip  # torch: import after run_job set the threads

    images = np.load(smk.input.array)
    captions = pa.concat_tables([pq.read_table(p, columns=["TEXT"]) for p in smk.input.metadata])
    cfg = ClipTrainConfig(**smk.params.train)
    stats = train_clip(images, captions.column("TEXT").to_pylist(), cfg, smk.output[0], log=log)
    write_json(f"{smk.output[0]}/training_stats.json", stats)


run_job(snakemake, main)
