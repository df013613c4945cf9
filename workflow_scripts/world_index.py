"""Embed the demo pool with its CLIP and write kNN indices in clip-retrieval's folder layout."""

from synret.workflow import run_job


def main(smk, log):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synret.knn import write_index_folder
    from synret.clip import encode_texts, load_clip  # torch: import after run_job set the threads
    from synret.embed import embed_images

    metadata = pa.concat_tables([pq.read_table(p) for p in smk.input.metadata])
    images = np.load(smk.input.array)
    clip = load_clip(f"local-dir:{smk.input.clip}")
    # images go through the model's own preprocessing, as downloaded images would
    image_emb = embed_images(clip, list(images), batch_size=512)
    log(f"embedded {len(image_emb)} images")
    text_emb = encode_texts(clip, metadata.column(smk.params.caption_column).to_pylist(), batch_size=1024).numpy()
    log(f"embedded {len(text_emb)} captions")
    write_index_folder(smk.output[0], image_emb, text_emb, metadata, factory=smk.params.factory)


run_job(snakemake, main, job_server=True)  # a short job: runs in the workflow's fork server
