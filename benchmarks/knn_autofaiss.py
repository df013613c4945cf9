"""Builds the benchmark's IVF-PQ index with autofaiss' choices; run by ``benchmarks/knn.py`` in the
clip-retrieval environment (autofaiss pins numpy<2, so it cannot live in the project's)::

    .venvs/clip-retrieval/bin/python benchmarks/knn_autofaiss.py EMB_DIR INDEX INFO.json --factory KEY ...

``--mode library`` (the default) takes from autofaiss, called as a library, what ``build_index`` would:
its own pick of factory for this size and memory budget (recorded, see below), the training-set size
(``get_optimal_train_size``) and the search parameters it stores in the index
(``get_optimal_hyperparameters``: the largest nprobe, with efSearch = 2 nprobe, that answers one query
in under ``max_index_query_time_ms`` on this machine, once 20 neighbours are covered), and trains
``--factory`` itself so that OPQ's iterations can be cut (``--opq-niter``): with 256 sub-quantizers
faiss' default 50 OPQ iterations take ~15 minutes on 2 cores. ``--mode build_index`` calls
``autofaiss.build_index`` unchanged instead (full OPQ training), for a machine with the cores for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from importlib.metadata import version
from pathlib import Path

import faiss
import numpy as np


def autofaiss_pick(n: int, d: int, max_index_memory: str) -> str:
    """The factory ``build_index`` picks unprompted for a memory-mappable index (as LAION serves it)."""
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    return get_optimal_index_keys_v2(n, d, max_index_memory, should_be_memory_mappable=True)[0]


def build_with_library(emb: np.ndarray, args) -> tuple[faiss.Index, dict]:
    from autofaiss.external.optimize import get_optimal_hyperparameters, get_optimal_train_size
    from autofaiss.indices.index_utils import set_search_hyperparameters

    n, d = emb.shape
    train_size = get_optimal_train_size(n, args.factory, args.current_memory, d)
    index = faiss.index_factory(d, args.factory, faiss.METRIC_INNER_PRODUCT)
    if args.factory.startswith("OPQ") and args.opq_niter:
        opq = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
        opq.niter, opq.niter_pq_0 = args.opq_niter, min(opq.niter_pq_0, 10)
    times = {}
    start = time.perf_counter()
    index.train(np.ascontiguousarray(emb[:train_size], dtype=np.float32))  # the rows are in random order
    times["train_seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    for s in range(0, n, 100_000):
        index.add(np.ascontiguousarray(emb[s:s + 100_000], dtype=np.float32))
    times["add_seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    param = get_optimal_hyperparameters(index, args.factory, max_speed_ms=args.max_query_ms,
                                        min_nearest_neighbors_to_retrieve=20)
    set_search_hyperparameters(index, param)
    times["hyperparameter_seconds"] = round(time.perf_counter() - start, 1)
    return index, {"train_size": train_size, "index_param": param, **times}


def build_with_build_index(folder: str, args) -> tuple[faiss.Index, dict]:
    from autofaiss import build_index

    start = time.perf_counter()
    index, infos = build_index(embeddings=folder, index_path=args.index, index_infos_path=args.info + ".autofaiss",
                               index_key=args.factory, metric_type="ip", max_index_memory_usage=args.max_index_memory,
                               current_memory_available=args.current_memory, max_index_query_time_ms=args.max_query_ms,
                               should_be_memory_mappable=True, nb_cores=args.threads, verbose=logging.WARNING)
    return index, {"index_param": infos["index_param"], "build_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("embeddings", help="folder holding one emb.npy (float32, rows in random order)")
    parser.add_argument("index")
    parser.add_argument("info")
    parser.add_argument("--factory", required=True)
    parser.add_argument("--mode", choices=("library", "build_index"), default="library")
    parser.add_argument("--max-index-memory", default="300M")
    parser.add_argument("--current-memory", default="1400M")
    parser.add_argument("--max-query-ms", type=float, default=10.0, help="autofaiss' default")
    parser.add_argument("--opq-niter", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    emb = np.load(Path(args.embeddings) / "emb.npy", mmap_mode="r")
    start = time.perf_counter()
    if args.mode == "library":
        index, info = build_with_library(emb, args)
        faiss.write_index(index, args.index)
    else:
        index, info = build_with_build_index(args.embeddings, args)
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    info.update({
        "mode": args.mode, "factory": args.factory,
        "autofaiss_pick": autofaiss_pick(*emb.shape, args.max_index_memory),
        "max_index_memory_usage": args.max_index_memory, "current_memory_available": args.current_memory,
        "max_index_query_time_ms": args.max_query_ms, "opq_niter": args.opq_niter if args.mode == "library" else 50,
        "stored_nprobe": int(ivf.nprobe), "nlist": int(ivf.nlist),
        "stored_efSearch": int(quantizer.hnsw.efSearch) if hasattr(quantizer, "hnsw") else None,
        "seconds": round(time.perf_counter() - start, 1), "threads": faiss.omp_get_max_threads(),
        "versions": {"autofaiss": version("autofaiss"),
                     "faiss": faiss.__version__, "numpy": np.__version__},
    })
    Path(args.info).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
