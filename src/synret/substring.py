"""Caption matching over an image-text pool's metadata parquet, all of a task's classes in one pass.

The reference selects captions with SQLite full-text search (``TEXT MATCH '<query>'`` on an FTS5
table with the default ``unicode61`` tokenizer), and so does this module, without SQLite:

* a caption is split into tokens as ``unicode61`` splits it: runs of letters, digits and
  private-use characters; everything else separates. Tokens are case-folded, and a Latin letter
  carrying one diacritic loses it ("Café" and "cafe" are the same token); the 25 combining marks
  such letters decompose into are dropped, other marks separate;
* a query is a list of alternatives (``OR``), an alternative a list of terms (``AND``), and a term
  is a phrase: its tokens must occur consecutively, in order. A bare word is a one-token phrase,
  so the reference's unquoted ``golden retriever`` is the two terms ``golden``, ``retriever``
  (both words, any order, anywhere) and its quoted ``"golden retriever"`` is one two-token term.

``tests/test_substring.py`` checks both against SQLite's FTS5 as an oracle. One known difference:
SQLite's tokenizer tables predate recent Unicode versions, and it treats characters assigned since
then (many emoji, recent scripts) as letters, where this module uses the running Python's Unicode
data. A vectorised regular expression over all query words first keeps only captions that could
match; the exact token check then runs on those alone.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

class _Fold(dict):
    """``str.translate`` table: a character's folded form in a token, or a space where it separates."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        category = unicodedata.category(char)
        if category[0] in "LN" or category == "Co":
            folded = char.casefold()
            if len(folded) > 1:  # "ß" stays, "İ" is "i": one character, marks dropped
                folded = char.lower()
            if len(folded) > 1:
                folded = "".join(c for c in folded if not unicodedata.combining(c)) or char
            base = unicodedata.normalize("NFD", folded)
            if len(base) == 2 and base[0].isascii() and base[1] in _LATIN_MARKS:
                folded = base[0]
        elif char in _LATIN_MARKS:
            folded = ""
        else:
            folded = " "
        self[code] = folded
        return folded


# the combining marks of precomposed Latin letters (one mark over an ASCII letter): U+0300-0331, 25 of them
_LATIN_MARKS = frozenset(
    d[1] for d in (unicodedata.normalize("NFD", chr(c)) for c in range(0x80, 0x2000))
    if len(d) == 2 and d[0].isascii() and d[0].isalpha() and unicodedata.category(d[1]) == "Mn"
)
_FOLD = _Fold({c: (chr(c).lower() if chr(c).isalnum() else " ") for c in range(128)})


def tokens(text: str) -> tuple[str, ...]:
    """The caption's tokens as FTS5's unicode61 tokenizer (remove_diacritics=1) makes them."""
    return tuple(text.translate(_FOLD).split())


# characters FTS5 accepts in a bare (unquoted) query word, besides letters and digits
_BAREWORD = re.compile("[0-9A-Za-z_\x1a\x80-\U0010ffff]+")


def name_query(name: str) -> list[list[str]]:
    """A class name's caption query, as the reference writes it: the name itself as an FTS5 query.

    An unquoted name is its words, each a term: all must occur, in any order ("golden retriever"
    matches "retriever puppy, golden coat"). A name with ``-`` or ``/`` is quoted by the reference,
    so it is one phrase ("F/A-18" matches "f a 18"). A name with another character FTS5 does not take
    unquoted (``'``, ``.``, ``(``, ``&`` ...) would be a syntax error in the reference, which gives such
    classes their own queries; here [ours] it is one phrase too.
    """
    words = name.split()
    if "-" in name or "/" in name or not all(_BAREWORD.fullmatch(w) for w in words):
        return [[name]]
    return [list(dict.fromkeys(words))]


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
        # prefilter (RE2 syntax): an ASCII caption must contain some term's word, at least as a substring;
        # any caption with a non-ASCII character goes on to the token check ("Café" holds the token "cafe")
        self.prefilter = ("(?i)(" + "|".join(re.escape(w) for w in words) + ")|[^\\x00-\\x7f]") if words else None

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
