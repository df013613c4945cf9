"""CLIP kNN indices in clip-retrieval's folder layout, queried directly with faiss.

Layout (what ``clip-retrieval index`` writes and ``clip-retrieval back`` serves): ``image.index`` and
``text.index`` (faiss, inner product over L2-normalised CLIP embeddings) and ``metadata/*.parquet``,
whose rows, in file-name order, are the index ids. We read such folders with faiss itself (memory-
mapped where faiss allows it) instead of importing clip-retrieval, whose pins (numpy<2, pyarrow<16,
open_clip<3) would hold the whole stack back. The same searches can go to a running
``clip-retrieval back`` instead (:func:`service_hits`, over :mod:`synret.knn_client`), with the same
output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .pool_text import as_str, as_text
from .progress import Progress

MODALITIES = ("image", "text")


def build_index(embeddings: np.ndarray, factory: str = "Flat"):
    """A faiss inner-product index over L2-normalised float32 embeddings."""
    import faiss

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.index_factory(emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(emb)
    index.add(emb)
    return index


def write_index_folder(
    out_dir: str | Path, image_emb: np.ndarray, text_emb: np.ndarray, metadata: pa.Table, factory: str = "Flat"
) -> Path:
    """Write an index folder in clip-retrieval's layout; row i of ``metadata`` is id i in both indices."""
    import faiss

    if not (len(image_emb) == len(text_emb) == metadata.num_rows):
        raise ValueError("image embeddings, text embeddings and metadata must have the same number of rows")
    out = Path(out_dir)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    for name, emb in (("image", image_emb), ("text", text_emb)):
        faiss.write_index(build_index(emb, factory), str(out / f"{name}.index"))
    pq.write_table(metadata, out / "metadata" / "metadata_0.parquet")
    return out


class KnnIndex:
    """A clip-retrieval index folder opened for search."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        parts = sorted((self.folder / "metadata").glob("*.parquet"))
        if not parts:
            raise FileNotFoundError(f"kNN index folder {str(self.folder)!r} has no metadata/*.parquet")
        self.metadata = pa.concat_tables([pq.read_table(p) for p in parts])
        self._indices: dict[str, object] = {}

    def index(self, modality: str):
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; choose from {MODALITIES}")
        if modality not in self._indices:
            import faiss

            path = self.folder / f"{modality}.index"
            if not path.is_file():
                raise FileNotFoundError(f"kNN index folder {str(self.folder)!r} has no {modality}.index")
            try:  # memory-map big indices as clip-retrieval's backend does; not every index type allows it
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                index = faiss.read_index(str(path))
            if index.ntotal != self.metadata.num_rows:
                raise ValueError(f"{path}: {index.ntotal} vectors but {self.metadata.num_rows} metadata rows")
            self._indices[modality] = index
        return self._indices[modality]

    def search(self, queries: np.ndarray, modality: str, k: int, nprobe: int | None = None,
               deduplicate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where fewer than k vectors exist.

        ``nprobe`` sets how many inverted lists an IVF index visits (faiss' default of 1 loses much of
        the recall; cross-modal text-to-image queries need many); other index types ignore it.
        ``deduplicate``: drop near-duplicates among each query's results as clip-retrieval does (see
        :func:`near_duplicates`); the survivors move up, and the tail is padded with -1.
        """
        import faiss

        index = self.index(modality)
        if nprobe is not None and faiss.try_extract_index_ivf(index) is not None:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, index.ntotal)
        if not deduplicate:
            return index.search(queries, k)
        scores, ids, vectors = index.search_and_reconstruct(queries, k)
        out_scores, out_ids = np.full_like(scores, -np.inf), np.full_like(ids, -1)
        for q in range(len(queries)):
            found = int((ids[q] >= 0).sum())
            drop = near_duplicates(vectors[q, :found])
            keep = [i for i in range(found) if i not in drop]
            out_scores[q, : len(keep)], out_ids[q, : len(keep)] = scores[q, keep], ids[q, keep]
        return out_scores, out_ids


DEDUP_THRESHOLD = 0.94  # clip-retrieval's


def near_duplicates(vectors: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> set[int]:
    """Positions of the near-duplicates among one query's results, as ``clip-retrieval back`` finds them
    (``deduplicate=True``): results whose normalised embeddings have a dot product above ``threshold``
    are linked, and of each connected group only the best-ranked (first) result stays."""
    import faiss
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vectors)
    if n < 2:
        return set()
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    flat = faiss.IndexFlatIP(v.shape[1])
    flat.add(v)
    limits, _, neighbours = flat.range_search(v, threshold)
    rows = np.repeat(np.arange(n), np.diff(limits.astype(np.int64)))
    graph = csr_matrix((np.ones(len(rows), np.int8), (rows, neighbours)), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    first = {}
    for i, g in enumerate(group):
        first.setdefault(g, i)
    return {i for i, g in enumerate(group) if first[g] != i}


def knn_hits(
    index: KnnIndex, query_emb: np.ndarray, labels: Sequence[int], queries: Sequence[str],
    modalities: Sequence[str], k: int, columns: dict[str, str], nprobe: int | None = None,
    deduplicate: bool = False,
) -> pa.Table:
    """Search every query in every modality; one row per (query, neighbour) with the pool's metadata."""
    out = {"label": [], "query": [], "method": [], "rank": [], "score": [], "row": []}
    for modality in modalities:
        scores, ids = index.search(query_emb, modality, k, nprobe, deduplicate)
        for q in range(len(queries)):
            keep = ids[q] >= 0
            n = int(keep.sum())
            out["label"] += [labels[q]] * n
            out["query"] += [queries[q]] * n
            out["method"] += [f"knn_{modality}"] * n
            out["rank"] += list(range(n))
            out["score"] += scores[q][keep].tolist()
            out["row"] += ids[q][keep].tolist()
    meta = index.metadata.take(pa.array(out.pop("row"), pa.int64()))
    return _hits_table(out, meta, columns, "kNN index metadata", "pool.columns")


def _hits_table(out: dict, meta: pa.Table, columns: dict[str, str], source: str, key: str) -> pa.Table:
    """The hits (label, query, method, rank, score) with the metadata columns mapped to their roles."""
    table = pa.table({**out, "label": pa.array(out["label"], pa.int32()), "score": pa.array(out["score"], pa.float32())})
    for role in ("id", "url", "caption", "nsfw", "planted_from"):
        column = columns.get(role)
        if column:
            if column not in meta.column_names:
                raise KeyError(f"{source} has no column {column!r} (config key '{key}.{role}')")
            table = table.append_column(role, as_text(meta.column(column)))  # invalid UTF-8: U+FFFD
    return table


def service_hits(
    client, query_emb: np.ndarray | None, labels: Sequence[int], queries: Sequence[str], modalities: Sequence[str],
    k: int, columns: dict[str, str], parallel: int = 4, log=None,
) -> pa.Table:
    """:func:`knn_hits` over a running ``clip-retrieval back`` (a :class:`synret.knn_client.KnnServiceClient`).

    With ``query_emb`` the query embeddings are sent (``embedding_input``), so the workflow's own
    CLIP embeds them exactly as for a local index; with None the texts are sent and the service's
    CLIP embeds them. Same rows and columns as :func:`knn_hits`; ``columns`` name the service's
    metadata columns (its ``id`` field, the index row, is there as column ``id``). Answers are
    consumed as they arrive, keeping only the mapped columns.
    """
    items = [(modality, q) for modality in modalities for q in range(len(queries))]
    requests = (
        {"modality": modality, "k": k,
         **({"text": queries[q]} if query_emb is None else {"embedding": np.asarray(query_emb[q]).tolist()})}
        for modality, q in items
    )
    wanted = {role: column for role, column in columns.items() if column}
    out = {"label": [], "query": [], "method": [], "rank": [], "score": []}
    meta: dict[str, list] = {column: [] for column in wanted.values()}
    progress = Progress(len(items), "kNN queries", log, unit="requests")
    for (modality, q), results in zip(items, client.query_many(requests, parallel)):
        for rank, result in enumerate(results):
            out["label"].append(labels[q])
            out["query"].append(queries[q])
            out["method"].append(f"knn_{modality}")
            out["rank"].append(rank)
            out["score"].append(float(result["similarity"]))
            for column, values in meta.items():  # each column once, even if two roles share it
                if column not in result:
                    role = next(r for r, c in wanted.items() if c == column)
                    raise KeyError(f"the kNN service {client.url} has no column {column!r} "
                                   f"(config key 'pool.knn_service.columns.{role}')")
                value = result[column]
                values.append(as_str(value))  # a JSON \udXXX escape: U+FFFD, not a crash
        progress.update()
    progress.done()
    table = pa.table({name: pa.array(values, pa.string()) for name, values in meta.items()})
    return _hits_table(out, table, columns, f"the kNN service {client.url}", "pool.knn_service.columns")
