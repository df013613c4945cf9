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
data. ASCII captions are matched batch by batch: with Hyperscan, one literal scan of the batch's
bytes finds each query's rarer words, and the few candidates it cannot settle are checked token by
token; without it, they are tokenized with array operations (pyarrow, numpy, one sparse product).
Captions with other characters take the token check caption by caption. All give the same answers
(tested).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import sparse

from .pool_text import as_text

try:  # optional: without it ASCII captions are tokenized with array operations (slower, the same matches)
    import hyperscan
except ImportError:
    hyperscan = None

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
        self.need = _needs_matrix(cells, (len(term_index), len(self.alternatives)))
        self.need_size = np.array([len(set(a.terms)) if all(t in term_index for t in a.terms) else -1
                                   for a in self.alternatives], dtype=np.int64)
        # per term length up to exact_len: the terms' integer keys, sorted, and their term indices
        self.key_groups = []
        for length in sorted({len(ids) for ids in self.term_ids.values() if len(ids) <= self.exact_len}):
            members = np.array([t for t, ids in enumerate(self.term_ids.values()) if len(ids) == length])
            keys = np.array([self._key(ids) for ids in self.term_ids.values() if len(ids) == length], dtype=np.int64)
            order = np.argsort(keys)
            self.key_groups.append((length, keys[order], members[order]))
        self._scan: _AnchorScan | None = None  # the Hyperscan path's, built on the first batch

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

        The same answers as :meth:`match` caption by caption (tests check it). ASCII captions go through
        a Hyperscan pass over the batch's bytes (see :class:`_AnchorScan`), or, without Hyperscan
        installed, are tokenized with array operations; the rest go through :meth:`match`."""
        captions = pc.fill_null(captions.cast(pa.string()), "")
        is_ascii = np.asarray(pc.string_is_ascii(captions).to_numpy(zero_copy_only=False), dtype=bool)
        slow = ~is_ascii
        found_rows, found_alts = [], []
        if self.words and is_ascii.any():
            if hyperscan is not None:
                if self._scan is None:  # built on the first batch: its anchors come from these captions' words
                    self._scan = _AnchorScan(self, _sample(captions, is_ascii))
                rows, alts = self._scan_ascii(captions, is_ascii)
            else:
                rows, alts = self._tokenize_ascii(captions, is_ascii, slow)
            found_rows.append(rows)
            found_alts.append(alts)
        for row in np.flatnonzero(slow):
            alts = self.match_indices(captions[int(row)].as_py())
            found_rows.append(np.full(len(alts), row, dtype=np.int64))
            found_alts.append(np.asarray(alts, dtype=np.int64))
        if not found_rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows, alts = np.concatenate(found_rows).astype(np.int64), np.concatenate(found_alts).astype(np.int64)
        order = np.lexsort((alts, rows))
        return rows[order], alts[order]

    def _scan_ascii(self, captions: pa.Array, is_ascii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ASCII captions' matches: the anchor scan's candidates, those it cannot settle checked here."""
        rows, alts, settled = self._scan.candidates(captions, is_ascii)
        check = np.flatnonzero(~settled)
        if len(check):
            chosen = captions.take(pa.array(rows[check]))
            offsets = np.frombuffer(chosen.buffers()[1], np.int32, len(chosen) + 1, 4 * chosen.offset).tolist()
            text = chosen.buffers()[2].to_pybytes().translate(_ASCII_WORDS)
            terms = self._scan.terms
            ok = [_holds(text[s:e].split(), terms[a])
                  for s, e, a in zip(offsets[:-1], offsets[1:], alts[check].tolist())]
            settled[check[np.asarray(ok, dtype=bool)]] = True
        return rows[settled], alts[settled]

    def _tokenize_ascii(self, captions: pa.Array, is_ascii: np.ndarray, slow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ASCII captions' matches, tokenized with array operations (the path without Hyperscan).
        Captions holding the first word of a term too long for an exact key are marked in ``slow``."""
        n = len(captions)
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
        if not pairs_rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        r, a = _all_needed(np.concatenate(pairs_rows), np.concatenate(pairs_terms), n, self.need, self.need_size)
        fast = ~slow[r]
        return r[fast], a[fast]


def _needs_matrix(cells: list[tuple[int, int]], shape: tuple[int, int]) -> sparse.csr_matrix:
    """items x alternatives: 1 where an alternative needs an item (a term, an anchor word)."""
    return sparse.csr_matrix((np.ones(len(cells), np.int32), ([c[0] for c in cells], [c[1] for c in cells])),
                             shape=shape)


def _all_needed(rows: np.ndarray, items: np.ndarray, n_rows: int, need: sparse.csr_matrix,
                need_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, alternative) where a row holds every item the alternative needs, given (row, item) presences
    (an item present twice counts once); ``need_size``: how many items each needs, -1 for never."""
    present = sparse.csr_matrix((np.ones(len(rows), np.int32), (rows, items)), shape=(n_rows, need.shape[0]))
    present.data[:] = 1
    counts = (present @ need).tocoo()
    match = counts.data == need_size[counts.col]
    return counts.row[match].astype(np.int64), counts.col[match].astype(np.int64)


def _holds(toks: list[bytes], terms: list[list[bytes]]) -> bool:
    """Whether an ASCII caption's tokens hold every term, each term's tokens consecutive and in order."""
    for term in terms:
        if len(term) == 1:
            if term[0] not in toks:
                return False
        elif not any(toks[i:i + len(term)] == term for i in range(len(toks) - len(term) + 1)):
            return False
    return True


# an ASCII caption's bytes with letters lowercased and every byte that is no letter or digit a space
_ASCII_WORDS = bytes(c + 32 if 65 <= c <= 90 else c if chr(c).isascii() and chr(c).isalnum() else 32 for c in range(256))


def _sample(captions: pa.Array, is_ascii: np.ndarray, size: int = 2000) -> list[str]:
    """Up to ``size`` of the batch's ASCII captions, evenly spread."""
    rows = np.flatnonzero(is_ascii)
    rows = rows[np.linspace(0, len(rows) - 1, min(size, len(rows))).astype(np.int64)]
    return captions.take(pa.array(rows)).to_pylist()


_ALNUM = np.frombuffer(_ASCII_WORDS, np.uint8) != 32  # ASCII letters and digits, by byte


class _AnchorScan:
    """One Hyperscan pass over a batch's caption bytes for each alternative's rarer words (its anchors).

    A caption can only match an alternative if it holds all of the alternative's words as tokens, so
    the captions holding all of its anchors are its candidates. The scan looks for the anchors as
    caseless literals in the captions' bytes as they are (no copy); a hit counts where it lies in one
    ASCII caption with no letter or digit either side. Python sees each hit (one callback each, the
    cost that matters here), so frequent words ("photo", "the") are anchors only where that is cheaper
    than checking the alternative's candidates: from a sample of the first batch, each alternative
    takes the rarest-first prefix of its words with the least expected cost. An alternative whose
    terms are single words, all anchors, is settled by the scan; the others' candidates are checked
    token by token. Which words are anchors changes the speed, never the matches (tested).
    """

    # the cost of checking a candidate token by token, in anchor occurrences (one callback each)
    check_cost = 2.0

    def __init__(self, matcher: TermMatcher, sample: list[str]):
        # each word's share of the sampled captions that hold it, and its occurrences per caption
        docs = Counter(w for text in sample for w in set(tokens(text)))
        uses = Counter(w for text in sample for w in tokens(text))
        size = max(len(sample), 1)
        share = {w: max(docs[w], 0.5) / size for w in matcher.words}
        word_id: dict[str, int] = {}
        cells = []  # (anchor word, alternative)
        n = len(matcher.alternatives)
        self.need_size = np.full(n, -1, dtype=np.int64)  # -1: cannot match an ASCII caption
        self.settles = np.zeros(n, dtype=bool)
        for i, alt in enumerate(matcher.alternatives):
            words = sorted({w for term in alt.terms for w in term}, key=lambda w: (share.get(w, 0), -len(w), w))
            if not all(w.isascii() for w in words):
                continue
            exact = all(len(term) == 1 for term in alt.terms)
            anchors = self._anchors(words, exact, share, {w: max(uses[w], 0.5) / size for w in words}, word_id)
            cells += [(word_id.setdefault(w, len(word_id)), i) for w in anchors]
            self.need_size[i] = len(anchors)
            self.settles[i] = exact and len(anchors) == len(words)
        self.words = list(word_id)
        self.terms = [[[w.encode() for w in term] for term in alt.terms] for alt in matcher.alternatives]
        self.lengths = np.array([len(w) for w in self.words], dtype=np.int64)
        self.need = _needs_matrix(cells, (len(self.words), n))
        self.database = hyperscan.Database()
        self.database.compile(expressions=[w.encode() for w in self.words], ids=list(range(len(self.words))),
                              elements=len(self.words), flags=[hyperscan.HS_FLAG_CASELESS] * len(self.words),
                              literal=True)

    def _anchors(self, words, exact, share, uses, chosen) -> list[str]:
        """The first j of an alternative's words (rarest first) for the j with the least expected cost per
        caption: the new anchors' occurrences plus, unless the anchors settle it, checking its candidates."""
        best, best_j = None, 1
        found, share_all = 0.0, 1.0
        for j, w in enumerate(words, start=1):
            found += 0.0 if w in chosen else uses[w]
            share_all *= share[w]
            cost = found + (0.0 if exact and j == len(words) else self.check_cost * share_all)
            if best is None or cost < best:
                best, best_j = cost, j
        return words[:best_j]

    def candidates(self, captions: pa.Array, is_ascii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(caption position, alternative, settled) for each ASCII caption holding all of an alternative's
        anchors as tokens; settled: the match needs no further check."""
        n = len(captions)
        offsets = np.frombuffer(captions.buffers()[1], np.int32, n + 1, 4 * captions.offset).astype(np.int64)
        data = captions.buffers()[2]
        words, ends = [], []

        def on_match(word, start, end, flags, context):
            words.append(word)
            ends.append(end)

        if data is not None and offsets[-1] > offsets[0]:
            self.database.scan(data.slice(offsets[0], offsets[-1] - offsets[0]), match_event_handler=on_match)
        empty = np.zeros(0, np.int64)
        if not words:
            return empty, empty, np.zeros(0, bool)
        # a literal hit is a token if it lies in one ASCII caption with no letter or digit either side
        words = np.asarray(words, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64) + offsets[0]
        starts = ends - self.lengths[words]
        row = np.searchsorted(offsets, starts, "right") - 1
        raw = np.frombuffer(data, np.uint8)
        first, last = offsets[row], offsets[row + 1]
        ok = (ends <= last) & is_ascii[row]
        ok &= (starts == first) | ~_ALNUM[raw[np.maximum(starts - 1, 0)]]
        ok &= (ends == last) | ~_ALNUM[raw[np.minimum(ends, len(raw) - 1)]]
        rows, alts = _all_needed(row[ok], words[ok], n, self.need, self.need_size)
        return rows, alts, self.settles[alts]


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
        captions = as_text(batch.column(wanted["caption"]))  # invalid UTF-8 in a caption: U+FFFD, not a crash
        rows, alts = matcher.match_batch(captions)
        if len(rows) == 0:
            continue
        take = pa.array(rows)
        columns = {"label": pa.array(labels[alts], pa.int32()), "query": queries.take(pa.array(alts))}
        columns.update({role: captions.take(take) if role == "caption" else as_text(batch.column(col).take(take))
                        for role, col in wanted.items()})
        parts.append(pa.table(columns))
    schema = pa.schema([("label", pa.int32()), ("query", pa.string())] + [(role, pa.string()) for role in wanted])
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()
