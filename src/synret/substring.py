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
data. ASCII captions are tokenized and their terms found with array operations (pyarrow, numpy,
one sparse product for the alternatives); captions with other characters take the token check
caption by caption. Both give the same answers (tested).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import sparse

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

        # the vectorised path (ASCII captions): word ids, each term as the ids of its words
        ascii_terms = [t for t in self.by_term if all(w.isascii() for w in t)]
        self.words = sorted({w for t in ascii_terms for w in t})
        word_id = {w: i for i, w in enumerate(self.words)}
        bits = max(1, (len(self.words) + 1).bit_length())
        self.exact_len = max(1, 62 // bits)  # terms up to this many words get an exact integer key
        self.term_ids = {t: tuple(word_id[w] for w in t) for t in ascii_terms}
        self.long_first_words = sorted({ids[0] for ids in self.term_ids.values() if len(ids) > self.exact_len})
        # alternatives x terms: which (distinct) terms each alternative needs; one that needs a term with
        # a non-ASCII word cannot match an ASCII caption and needs nothing here (it never reaches its size)
        term_index = {t: i for i, t in enumerate(self.term_ids)}
        cells = [(term_index[t], i) for i, a in enumerate(self.alternatives)
                 if all(t in term_index for t in a.terms) for t in set(a.terms)]
        self.need = sparse.csr_matrix((np.ones(len(cells), np.int32), ([c[0] for c in cells], [c[1] for c in cells])),
                                      shape=(len(term_index), len(self.alternatives)))
        self.need_size = np.array([len(set(a.terms)) if all(t in term_index for t in a.terms) else -1
                                   for a in self.alternatives], dtype=np.int64)
        # per term length up to exact_len: the terms' integer keys, sorted, and their term indices
        self.key_groups = []
        for length in sorted({len(ids) for ids in self.term_ids.values() if len(ids) <= self.exact_len}):
            members = np.array([t for t, ids in enumerate(self.term_ids.values()) if len(ids) == length])
            keys = np.array([self._key(ids) for ids in self.term_ids.values() if len(ids) == length], dtype=np.int64)
            order = np.argsort(keys)
            self.key_groups.append((length, keys[order], members[order]))

    def match(self, caption: str) -> list[Alternative]:
        return [self.alternatives[i] for i in self.match_indices(caption)]

    def match_indices(self, caption: str) -> list[int]:
        """The indices of the alternatives that match, in order."""
        toks = tokens(caption)
        present = {
            toks[i : i + n] for n in range(1, self.max_len + 1) for i in range(len(toks) - n + 1)
        } & self.by_term.keys()
        candidates = {i for term in present for i in self.by_term[term]}
        return [i for i in sorted(candidates) if all(t in present for t in self.alternatives[i].terms)]


    def _key(self, ids) -> int:
        key = 0
        for i in ids:
            key = key * (len(self.words) + 1) + i + 1
        return key

    def match_batch(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Every (caption position, alternative index) match in an array of captions, sorted.

        The same answers as :meth:`match` caption by caption (a test checks it): ASCII captions are
        tokenized, and their terms found, with array operations; the rest go through :meth:`match`."""
        captions = pc.fill_null(captions.cast(pa.string()), "")
        n = len(captions)
        is_ascii = np.asarray(pc.string_is_ascii(captions).to_numpy(zero_copy_only=False), dtype=bool)
        slow = ~is_ascii
        found_rows, found_alts = [], []
        if self.words and is_ascii.any():
            rows_fast = np.flatnonzero(is_ascii)
            lists = pc.split_pattern_regex(pc.ascii_lower(captions.take(pa.array(rows_fast))), "[^a-z0-9]+")
            tokens_flat = pc.list_flatten(lists)
            parent = rows_fast[np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False))]
            ids = pc.index_in(tokens_flat, value_set=pa.array(self.words, pa.string()))
            ids = np.asarray(pc.fill_null(ids, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            keep = ids >= 0  # tokens that are some term's word (empty strings and other words go)
            position = np.flatnonzero(keep)
            ids, parent = ids[keep], parent[keep]
            base = len(self.words) + 1
            pairs_rows, pairs_terms = [], []
            for length, keys, members in self.key_groups:
                if len(ids) < length:
                    continue
                span = len(ids) - length + 1
                key = np.zeros(span, dtype=np.int64)
                ok = np.ones(span, dtype=bool)
                for k in range(length):  # consecutive tokens of one caption
                    key = key * base + ids[k:k + span] + 1
                    if k:
                        ok &= (position[k:k + span] - position[:span] == k) & (parent[k:k + span] == parent[:span])
                where = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
                hit = ok & (keys[where] == key)
                pairs_rows.append(parent[:span][hit])
                pairs_terms.append(members[where[hit]])
            if self.long_first_words:  # terms too long for an exact key: those captions go the slow way
                slow[np.unique(parent[np.isin(ids, self.long_first_words)])] = True
            if pairs_rows:
                rows_t = np.concatenate(pairs_rows)
                terms_t = np.concatenate(pairs_terms)
                present = sparse.csr_matrix((np.ones(len(rows_t), np.int32), (rows_t, terms_t)),
                                            shape=(n, len(self.term_ids)))
                present.data[:] = 1  # a term present twice counts once
                counts = (present @ self.need).tocoo()
                match = counts.data == self.need_size[counts.col]
                r, a = counts.row[match], counts.col[match]
                fast = ~slow[r]
                found_rows.append(r[fast])
                found_alts.append(a[fast])
        for row in np.flatnonzero(slow):
            alts = self.match_indices(captions[int(row)].as_py())
            found_rows.append(np.full(len(alts), row, dtype=np.int64))
            found_alts.append(np.asarray(alts, dtype=np.int64))
        if not found_rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows, alts = np.concatenate(found_rows).astype(np.int64), np.concatenate(found_alts).astype(np.int64)
        order = np.lexsort((alts, rows))
        return rows[order], alts[order]


def scan_parquet(path: str, matcher: TermMatcher, columns: dict[str, str], batch_rows: int = 65536) -> pa.Table:
    """All matches in one metadata parquet: one row per (alternative, caption) hit."""
    wanted = {role: col for role, col in columns.items() if col}
    file = pq.ParquetFile(path)
    missing = [f"{col!r} (config key 'pool.columns.{role}')" for role, col in wanted.items()
               if col not in file.schema_arrow.names]
    if missing:
        raise KeyError(f"{path}: no column {', '.join(missing)}")
    labels = np.array([a.label for a in matcher.alternatives], dtype=np.int32)
    queries = pa.array([a.query for a in matcher.alternatives], pa.string())
    parts: list[pa.Table] = []
    for batch in file.iter_batches(batch_size=batch_rows, columns=list(wanted.values())):
        if matcher.prefilter is None:
            break
        rows, alts = matcher.match_batch(batch.column(wanted["caption"]))
        if len(rows) == 0:
            continue
        hit = batch.take(pa.array(rows))
        columns = {"label": pa.array(labels[alts], pa.int32()), "query": queries.take(pa.array(alts))}
        columns.update({role: hit.column(col).cast(pa.string()) for role, col in wanted.items()})
        parts.append(pa.table(columns))
    schema = pa.schema([("label", pa.int32()), ("query", pa.string())] + [(role, pa.string()) for role in wanted])
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()
