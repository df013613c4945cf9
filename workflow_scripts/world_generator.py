"""Train the demo world's tiny Stable-Diffusion-style pipeline on the pool and save it with save_pretrained."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synret.workflow import run_job, write_json


def main(smk, log):
    from synret.world.generator import GeneratorConfig, train_generator  # torch: import after run_job set the threads

    images = np.load(smk.input.array)
    captions = pa.concat_tables([pq.read_table(p, columns=["TEXT"]) for p in smk.input.metadata])
    cfg = GeneratorConfig(**smk.params.train)
    snapshots = {name: f"results/world/generator_{name}" for name in sorted(cfg.snapshots or {})}
    stats = train_generator(images, captions.column("TEXT").to_pylist(), smk.input.clip, smk.output.generator, cfg,
                            log=log, snapshot_dirs=snapshots)
    write_json(f"{smk.output.generator}/training_stats.json", stats)


run_job(snakemake, main)
