"""The retrieved arm's candidate list: kNN and substring hits unioned per (class, pool item).

As in the paper, a pool item is kept once per class it was retrieved for (so it can carry two
labels if two classes' queries hit it), NSFW-tagged rows are dropped before anything is downloaded,
and each candidate remembers which methods and queries found it.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa

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
