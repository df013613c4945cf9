"""The retrieved arm's candidate list: kNN and substring hits unioned per (class, pool item).

As in the paper, a pool item is kept once per class it was retrieved for (so it can carry two
labels if two classes' queries hit it), NSFW-tagged rows are dropped before anything is downloaded,
and each candidate remembers which methods and queries found it.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa

from .pool_text import text_columns

HIT_COLUMNS = ["label", "query", "method", "score", "id", "url", "caption", "nsfw", "planted_from"]


HIT_TYPES = {"label": "int64", "query": "object", "method": "object", "score": "float64", "id": "object",
             "url": "object", "caption": "object", "nsfw": "object", "planted_from": "object"}


def _normalise(table: pa.Table, method: str | None) -> pd.DataFrame:
    df = table.to_pandas()
    if method is not None:
        df["method"] = method
    for column in HIT_COLUMNS:
        if column not in df:
            df[column] = None
    return df[HIT_COLUMNS].astype(HIT_TYPES)


def cap_per_class(candidates: pd.DataFrame, cap: int | None) -> pd.DataFrame:
    """At most ``cap`` candidates per class, chosen by a hash of the pool id: deterministic, independent
    of row order and of the other classes, and the same items stay chosen when the cap grows."""
    if cap is None:
        return candidates
    order = candidates["id"].map(lambda i: hashlib.sha1(str(i).encode()).hexdigest())
    ranked = candidates.assign(_order=order).sort_values(["label", "_order"], kind="stable")
    return ranked.groupby("label", sort=True).head(cap).drop(columns="_order").sort_values(["label", "id"])


def merge_candidates(
    knn: pa.Table | None, substring: pa.Table | None, drop_nsfw: list[str], max_per_class: int | None = None
) -> tuple[pa.Table, dict]:
    """Union the hits, drop NSFW-tagged rows, one row per (label, id), optionally capped per class.

    Returns (candidates, counts).
    """
    frames = []
    if knn is not None:
        frames.append(_normalise(knn, None))
    if substring is not None:
        frames.append(_normalise(substring, "substring"))
    frames = [f for f in frames if len(f)]
    hits = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HIT_COLUMNS).astype(HIT_TYPES)
    if hits["id"].isna().any():
        raise ValueError("retrieval hits without a pool id (config key 'pool.columns.id')")
    counts = {"hits": int(len(hits)), "hits_by_method": hits["method"].value_counts().sort_index().to_dict()}
    nsfw = hits["nsfw"].isin(drop_nsfw)
    counts["nsfw_dropped_hits"] = int(nsfw.sum())
    hits = hits[~nsfw]
    grouped = hits.sort_values(["label", "id", "score"], ascending=[True, True, False], na_position="last").groupby(
        ["label", "id"], sort=True
    )
    candidates = grouped.agg(
        url=("url", "first"),
        caption=("caption", "first"),
        query=("query", "first"),
        methods=("method", lambda m: "+".join(sorted(set(m)))),
        score=("score", "max"),
        planted_from=("planted_from", "first"),
    ).reset_index()
    counts["candidates_before_cap"] = int(len(candidates))
    candidates = cap_per_class(candidates, max_per_class).reset_index(drop=True)
    counts["candidates"] = int(len(candidates))
    counts["candidates_per_class"] = {
        int(k): int(v) for k, v in candidates["label"].value_counts().sort_index().items()
    }
    counts["unique_urls"] = int(candidates["url"].nunique())
    table = pa.Table.from_pandas(candidates, preserve_index=False).cast(
        pa.schema([("label", pa.int32()), ("id", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                   ("query", pa.string()), ("methods", pa.string()), ("score", pa.float32()),
                   ("planted_from", pa.string())])
    )
    return table, counts


CANDIDATE_SCHEMA = pa.schema([("label", pa.int32()), ("id", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                              ("query", pa.string()), ("methods", pa.string()), ("score", pa.float32()),
                              ("planted_from", pa.string())])


def random_pool_sample(parts: list[str], columns: dict[str, str], n: int, seed: int, drop_nsfw: list[str],
                       batch_rows: int = 1 << 18) -> tuple[pa.Table, dict]:
    """An untargeted sample of ``n`` pool items, as candidates without a label (-1: the curation labels them).

    Items are ranked by a seeded hash of their id and the ``n`` lowest kept, reading the metadata parts
    batch by batch: deterministic, independent of how the pool is split into parts, and a larger ``n``
    keeps the items a smaller one drew. NSFW-tagged rows are never drawn.
    """
    import pyarrow.parquet as pq

    wanted = {role: col for role, col in columns.items() if col and role in ("id", "url", "caption", "nsfw", "planted_from")}
    key = hashlib.sha256(f"random-sample-{seed}".encode()).hexdigest()[:16]
    best: pd.DataFrame | None = None
    seen = nsfw_rows = 0
    for path in parts:
        file = pq.ParquetFile(path)
        missing = [f"{col!r} (config key 'pool.columns.{role}')" for role, col in wanted.items()
                   if col not in file.schema_arrow.names]
        if missing:
            raise KeyError(f"{path}: no column {', '.join(missing)}")
        for batch in file.iter_batches(batch_size=batch_rows, columns=list(wanted.values())):
            # invalid UTF-8 (in a string or binary column) becomes U+FFFD rather than stop the scan
            df = text_columns(batch).to_pandas().rename(columns={col: role for role, col in wanted.items()})
            seen += len(df)
            if "nsfw" in df:
                nsfw = df["nsfw"].isin(drop_nsfw)
                nsfw_rows += int(nsfw.sum())
                df = df[~nsfw]
            df = df.assign(id=df["id"].astype(str))
            df["_rank"] = pd.util.hash_array(df["id"].to_numpy(object), hash_key=key)
            best = df if best is None else pd.concat([best, df], ignore_index=True)
            best = best.sort_values(["_rank", "id"], kind="stable").head(n)
    sample = (best if best is not None else pd.DataFrame(columns=["id", "_rank"])).drop_duplicates("id")
    sample = sample.sort_values("id", kind="stable")
    table = pa.table({
        "label": pa.array([-1] * len(sample), pa.int32()), "id": pa.array(sample["id"], pa.string()),
        "url": pa.array(sample["url"].astype(str) if len(sample) else [], pa.string()),
        "caption": pa.array(sample["caption"] if "caption" in sample else [None] * len(sample), pa.string()),
        "query": pa.array([None] * len(sample), pa.string()), "methods": pa.array(["random"] * len(sample), pa.string()),
        "score": pa.array([None] * len(sample), pa.float32()),
        "planted_from": pa.array(sample["planted_from"] if "planted_from" in sample else [None] * len(sample), pa.string()),
    }, schema=CANDIDATE_SCHEMA)
    counts = {"pool_rows": seen, "nsfw_dropped": nsfw_rows, "candidates": table.num_rows,
              "unique_urls": int(sample["url"].nunique()) if len(sample) else 0}
    return table, counts
