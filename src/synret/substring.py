"""Caption matching over an image-text pool's metadata parquet, all of a task's classes in one pass.

A query is a list of alternatives and an alternative a list of terms that must all occur (the
paper's ``"rose" AND "flower"``, ``"St. Bernard" OR "Saint Bernard"``). Matching is on word tokens,
case-insensitive, as a full-text ``MATCH`` would do: ``"red star"`` matches "a RED star!" but not
"red starfish". A vectorised regular expression over all terms first keeps only captions that could
match; the exact token check then runs on those alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WORD = re.compile(r"[^\W_]+")


def tokens(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(text.lower()))


@dataclass(frozen=True)
class Alternative:
    label: int
    query: str
    terms: tuple[tuple[str, ...], ...]  # each term as its word tokens


class TermMatcher:
    """Finds, for a caption, every (label, query) alternative whose terms all occur in it."""

    def __init__(self, alternatives: Iterable[tuple[int, str, Sequence[str]]]):
        self.alternatives = []
        for label, query, terms in alternatives:
            toks = tuple(tokens(t) for t in terms)
            if not all(toks):
                raise ValueError(f"substring query {query!r} has a term without letters or digits")
            self.alternatives.append(Alternative(label, query, toks))
        self.by_term: dict[tuple[str, ...], list[int]] = {}
        for i, alt in enumerate(self.alternatives):
            for term in alt.terms:
                self.by_term.setdefault(term, []).append(i)
        self.max_len = max((len(t) for t in self.by_term), default=1)
        words = sorted({w for term in self.by_term for w in term}, key=len, reverse=True)
        # prefilter: a caption must contain some term's word, at least as a substring (RE2 syntax)
        self.prefilter = "(?i)(" + "|".join(re.escape(w) for w in words) + ")" if words else None

    def match(self, caption: str) -> list[Alternative]:
        toks = tokens(caption)
        present = {
            toks[i : i + n] for n in range(1, self.max_len + 1) for i in range(len(toks) - n + 1)
        } & self.by_term.keys()
        candidates = {i for term in present for i in self.by_term[term]}
        return [self.alternatives[i] for i in sorted(candidates) if all(t in present for t in self.alternatives[i].terms)]


def scan_parquet(path: str, matcher: TermMatcher, columns: dict[str, str], batch_rows: int = 65536) -> pa.Table:
    """All matches in one metadata parquet: one row per (alternative, caption) hit."""
    wanted = {role: col for role, col in columns.items() if col}
    file = pq.ParquetFile(path)
    missing = [f"{col!r} (config key 'pool.columns.{role}')" for role, col in wanted.items()
               if col not in file.schema_arrow.names]
    if missing:
        raise KeyError(f"{path}: no column {', '.join(missing)}")
    out: dict[str, list] = {"label": [], "query": [], **{role: [] for role in wanted}}
    for batch in file.iter_batches(batch_size=batch_rows, columns=list(wanted.values())):
        captions = batch.column(wanted["caption"])
        if matcher.prefilter is None:
            break
        maybe = pc.fill_null(pc.match_substring_regex(captions, matcher.prefilter), False)
        rows = batch.filter(maybe)
        values = {role: rows.column(col).cast(pa.string()).to_pylist() for role, col in wanted.items()}
        for i, caption in enumerate(values["caption"]):
            for alt in matcher.match(caption or ""):
                out["label"].append(alt.label)
                out["query"].append(alt.query)
                for role in wanted:
                    out[role].append(values[role][i])
    table = pa.table({"label": pa.array(out["label"], pa.int32()), "query": pa.array(out["query"], pa.string())})
    for role in wanted:
        table = table.append_column(role, pa.array(out[role], pa.string()))
    return table
