"""Tests of synret.substring: whole-token caption matching and the parquet scan."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synret.substring import TermMatcher, name_query, scan_parquet, tokens

LAION_COLUMNS = {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "nsfw": "NSFW"}


def _labels(matcher: TermMatcher, caption: str) -> list[tuple[int, str]]:
    return [(alt.label, alt.query) for alt in matcher.match(caption)]


@pytest.fixture
def red_star() -> TermMatcher:
    return TermMatcher([(0, "red star", ["red star"])])


def test_tokens():
    assert tokens("A RED star!") == ("a", "red", "star")
    assert tokens("red_star") == ("red", "star")
    assert tokens("red-star, F-16") == ("red", "star", "f", "16")
    assert tokens("Café") == ("cafe",)  # FTS5 unicode61 drops a Latin letter's diacritic
    assert tokens("STRASSE straße İstanbul ſ") == ("strasse", "straße", "istanbul", "s")
    assert tokens("...") == ()


@pytest.mark.parametrize(
    "caption", ["A RED star!", "red-star", "red_star", "a red star", "Red Star", "the red   star.", "(red)(star)"]
)
def test_phrase_matches_whole_tokens_case_insensitively(red_star, caption):
    assert _labels(red_star, caption) == [(0, "red star")]


@pytest.mark.parametrize(
    "caption", ["red starfish", "star red", "red big star", "redstar", "bored star", "red", "", "a blue star"]
)
def test_phrase_does_not_match(red_star, caption):
    assert red_star.match(caption) == []


def test_and_of_terms():
    matcher = TermMatcher([(3, "rose AND flower", ["rose", "flower"])])
    assert _labels(matcher, "a flower: the ROSE") == [(3, "rose AND flower")]
    assert matcher.match("a rose") == []
    assert matcher.match("a flower") == []
    assert matcher.match("roses and flowers") == []


def test_or_of_alternatives():
    matcher = TermMatcher(
        [(1, "St. Bernard", ["St. Bernard"]), (1, "Saint Bernard", ["Saint Bernard"]), (2, "pug", ["pug"])]
    )
    assert _labels(matcher, "my st bernard") == [(1, "St. Bernard")]
    assert _labels(matcher, "A SAINT-BERNARD puppy") == [(1, "Saint Bernard")]
    assert _labels(matcher, "saint bernard and st. bernard with a pug") == [
        (1, "St. Bernard"), (1, "Saint Bernard"), (2, "pug")
    ]
    assert matcher.match("bernard the saint") == []


def test_overlapping_terms_for_different_labels_both_match():
    matcher = TermMatcher([(0, "star", ["star"]), (1, "red star", ["red star"])])
    assert _labels(matcher, "a red star") == [(0, "star"), (1, "red star")]
    assert _labels(matcher, "a blue star") == [(0, "star")]
    assert _labels(matcher, "a red starfish") == []


def test_same_term_shared_by_alternatives():
    matcher = TermMatcher([(0, "red AND star", ["red", "star"]), (1, "blue AND star", ["blue", "star"])])
    assert _labels(matcher, "red and blue stars") == []
    assert _labels(matcher, "a red star next to a blue star") == [(0, "red AND star"), (1, "blue AND star")]


def test_term_without_word_characters_is_rejected():
    with pytest.raises(ValueError, match=re.escape("'!!'")):
        TermMatcher([(0, "!!", ["!!"])])


def test_empty_matcher():
    matcher = TermMatcher([])
    assert matcher.prefilter is None
    assert matcher.match("anything") == []


# ---------------------------------------------------------------- parquet scan

CAPTIONS = [
    "A RED star!",                 # 0: red star, star
    "red starfish on the beach",   # 1: nothing
    None,                          # 2: null caption
    "star red",                    # 3: star only
    "a blue circle",               # 4: circle
    "Red_Star logo",               # 5: red star, star
    "",                            # 6
    "CAFÉ with a circle",          # 7: circle, café (FTS5: "café" and "cafe" are one token)
    "circles everywhere",          # 8: nothing
    "a red-star and a circle",     # 9: red star, star, circle
    "stars",                       # 10: nothing
    "just a star",                 # 11: star
]
NSFW = ["UNLIKELY", None, "NSFW", "UNSURE", "UNLIKELY", "NSFW", None, "UNLIKELY", None, "UNLIKELY", "UNLIKELY", None]


@pytest.fixture
def pool_file(tmp_path) -> str:
    table = pa.table(
        {
            "SAMPLE_ID": pa.array([1000 + i for i in range(len(CAPTIONS))], pa.int64()),
            "URL": [f"http://127.0.0.1:1/{i}.png" for i in range(len(CAPTIONS))],
            "TEXT": pa.array(CAPTIONS, pa.string()),
            "HEIGHT": pa.array([32] * len(CAPTIONS), pa.int32()),
            "NSFW": pa.array(NSFW, pa.string()),
        }
    )
    path = tmp_path / "part-0.parquet"
    pq.write_table(table, path, row_group_size=5)
    return str(path)


@pytest.fixture
def matcher() -> TermMatcher:
    return TermMatcher(
        [(0, "red star", ["red star"]), (1, "star", ["star"]), (2, "circle", ["circle"]), (3, "café", ["café"])]
    )


def _expected() -> list[dict]:
    hits = {
        0: [(0, "red star"), (1, "star")],
        3: [(1, "star")],
        4: [(2, "circle")],
        5: [(0, "red star"), (1, "star")],
        7: [(2, "circle"), (3, "café")],
        9: [(0, "red star"), (1, "star"), (2, "circle")],
        11: [(1, "star")],
    }
    rows = []
    for i, found in hits.items():
        for label, query in found:
            rows.append(
                {"label": label, "query": query, "id": str(1000 + i), "url": f"http://127.0.0.1:1/{i}.png",
                 "caption": CAPTIONS[i], "nsfw": NSFW[i]}
            )
    return rows


@pytest.mark.parametrize("batch_rows", [1, 3, 5, 65536])
def test_scan_parquet_returns_exactly_the_hits(pool_file, matcher, batch_rows):
    table = scan_parquet(pool_file, matcher, LAION_COLUMNS, batch_rows=batch_rows)
    assert table.column_names == ["label", "query", "id", "url", "caption", "nsfw"]
    assert table.schema.field("label").type == pa.int32()
    for column in ("query", "id", "url", "caption", "nsfw"):
        assert table.schema.field(column).type == pa.string(), column
    assert table.to_pylist() == _expected()


def test_scan_parquet_without_nsfw_column(pool_file, matcher):
    columns = {**LAION_COLUMNS, "nsfw": None}
    table = scan_parquet(pool_file, matcher, columns, batch_rows=4)
    assert table.column_names == ["label", "query", "id", "url", "caption"]
    assert table.to_pylist() == [{k: v for k, v in row.items() if k != "nsfw"} for row in _expected()]


def test_scan_parquet_all_null_captions(tmp_path, matcher):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"SAMPLE_ID": pa.array([1, 2], pa.int64()), "URL": ["a", "b"],
                             "TEXT": pa.array([None, None], pa.string()), "NSFW": ["UNLIKELY", None]}), path)
    table = scan_parquet(str(path), matcher, LAION_COLUMNS, batch_rows=1)
    assert table.num_rows == 0
    assert table.column_names == ["label", "query", "id", "url", "caption", "nsfw"]


def test_scan_parquet_no_alternatives(pool_file):
    table = scan_parquet(pool_file, TermMatcher([]), LAION_COLUMNS)
    assert table.num_rows == 0
    assert table.column_names == ["label", "query", "id", "url", "caption", "nsfw"]


def test_scan_parquet_missing_column_names_column_and_config_key(pool_file, matcher):
    columns = {**LAION_COLUMNS, "caption": "CAPTION"}
    with pytest.raises(KeyError) as info:
        scan_parquet(pool_file, matcher, columns)
    message = str(info.value)
    assert "'CAPTION'" in message
    assert "pool.columns.caption" in message
    assert pool_file in message
    assert "pool.columns.url" not in message


def test_scan_parquet_missing_nsfw_column(pool_file, matcher):
    columns = {**LAION_COLUMNS, "nsfw": "punsafe"}
    with pytest.raises(KeyError, match=re.escape("pool.columns.nsfw")):
        scan_parquet(pool_file, matcher, columns)



# ---------------------------------------------------------------- SQLite FTS5 as the oracle
# The reference selects captions with `SELECT * FROM samples WHERE TEXT MATCH '<query>'` on FTS5 tables
# (unicode61 tokenizer, its defaults). These tests build such a table from generated captions and check
# that the matcher returns exactly the rows FTS5 returns, query by query.

import random
import sqlite3
import unicodedata

ORACLE_NAMES = [
    "golden retriever", "red star", "F/A-18", "737-800", "Boeing 737", "Type-S coupe", "café racer", "Ærø ferry",
    "σκύλος", "東京 tower", "a_b", "Mercedes-Benz Sprinter", "ß straße", "İstanbul tram", "cab 2012",
    "naïve art", "x", "über-cool", "pink primrose", "bird of paradise",
]
FILLER = ["a", "the", "photo", "of", "my", "with", "on", "sale", "new", "puppy", "coat", "tower", "art", "van",
          "Tokyo", "東京タワー", "σκυλος", "ΣΚΎΛΟΣ", "🐶", "dog", "retrievers", "stars", "ferry", "Aero", "aerø",
          "2012", "12", "F", "A", "18", "800", "type", "s", "S", "coupé", "Cafe", "CAFÉ", "racer", "über", "cool",
          "strasse", "istanbul", "tram", "naive", "NAÏVE", "primrose", "pink", "paradise", "bird", "of", "x", "ab",
          "rose", "Roses", "flower", "St.", "St", "Saint", "Bernard", "golden"]
SEPARATORS = [" ", " ", " ", ", ", "-", "/", "_", ". ", "! ", "'", "\u00a0", "\t", "\n", " (", ") ", ":", " & ", "’"]


def _variant(word: str, rng: random.Random) -> str:
    return rng.choice([word, word.upper(), word.capitalize(), word.lower()])


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [w for name in ORACLE_NAMES for w in re.split(r"[\s]+", name)] + FILLER
    out = []
    for _ in range(n):
        words = [_variant(rng.choice(vocab), rng) for _ in range(rng.randint(0, 9))]
        if rng.random() < 0.3:  # a class name whole, the way captions usually carry it
            name = rng.choice(ORACLE_NAMES)
            words.insert(rng.randint(0, len(words)), _variant(name, rng))
        text = ""
        for w in words:
            text += w + rng.choice(SEPARATORS)
        out.append(text.strip() if rng.random() < 0.8 else text)
    return out


@pytest.fixture(scope="module")
def fts5():
    captions = _captions(3000)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE samples USING fts5(TEXT)")
    db.executemany("INSERT INTO samples(rowid, TEXT) VALUES (?, ?)", enumerate(captions))

    def rows(query: str) -> set[int]:
        return {r[0] for r in db.execute("SELECT rowid FROM samples WHERE TEXT MATCH ?", (query,))}

    return captions, rows


def _ours(captions: list[str], alternatives: list[list[str]]) -> set[int]:
    matcher = TermMatcher((0, " OR ".join(" AND ".join(a) for a in alternatives), a) for a in [*alternatives])
    return {i for i, c in enumerate(captions) if matcher.match(c)}


def _fts5_query(alternatives: list[list[str]]) -> str:
    """Our alternatives written as an FTS5 query: OR of ANDs of quoted phrases."""
    def phrase(term: str) -> str:
        return '"' + term.replace('"', '""') + '"'
    return " OR ".join("(" + " AND ".join(phrase(t) for t in terms) + ")" for terms in alternatives)


def _reference_query(name: str) -> str:
    """The query string the reference builds from a class name without a class_map entry."""
    if ("-" in name or "/" in name) and '"' not in name:
        return '"' + name + '"'
    return name


def test_captions_exercise_the_hard_cases():
    captions = _captions(3000)
    assert any(not c.isascii() for c in captions)
    assert any("\u00a0" in c for c in captions) and any("’" in c for c in captions)
    assert sum(bool(_ours(captions, name_query(n))) for n in ORACLE_NAMES) == len(ORACLE_NAMES)


@pytest.mark.parametrize("name", ORACLE_NAMES)
def test_class_name_query_matches_fts5(fts5, name):
    captions, rows = fts5
    expected = rows(_reference_query(name))
    assert expected, f"no caption matches {name!r}: the generated captions do not test it"
    assert _ours(captions, name_query(name)) == expected


def test_unquoted_words_match_in_any_order(fts5):
    assert name_query("golden retriever") == [["golden", "retriever"]]
    assert name_query("F/A-18") == [["F/A-18"]]
    assert _ours(["retriever puppy, golden coat"], name_query("golden retriever")) == {0}
    assert _ours(["a golden-retriever"], name_query("golden retriever")) == {0}
    assert _ours(["F 18 A"], name_query("F/A-18")) == set()


@pytest.mark.parametrize("name", ["colt's foot", "St. Bernard", "potter's wheel", "R&B"])
def test_names_fts5_cannot_take_unquoted_are_phrases(name):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE samples USING fts5(TEXT)")
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):  # the reference would stop here
        db.execute("SELECT * FROM samples WHERE TEXT MATCH ?", (name,)).fetchall()
    assert name_query(name) == [[name]]


@pytest.mark.parametrize("alternatives", [
    [["rose", "flower"]],                                                  # '"rose" AND "flower"'
    [["St. Bernard"], ["St Bernard"], ["Saint Bernard"]],                  # ImageNet's class_map
    [["golden retriever"]],                                                # a quoted phrase
    [["bird of paradise"], ["paradise", "bird"]],
    [["Type S", "coupe"], ["ferry"]],
    [["über"], ["σκύλος", "東京"]],
    [["x"], ["a b"], ["photo of my"]],
])
def test_explicit_queries_match_fts5(fts5, alternatives):
    captions, rows = fts5
    expected = rows(_fts5_query(alternatives))
    assert expected
    assert _ours(captions, alternatives) == expected


def test_reference_cars_and_dtd_queries_match_fts5(fts5):
    from synret.prompts import retrieval_queries

    captions, rows = fts5
    # the reference's Stanford Cars query: each word quoted, hyphens as spaces, all ANDed
    name = "Mercedes-Benz Sprinter"
    reference = " AND ".join(f'"{w.replace("-", " ")}"' for w in name.split())
    table = retrieval_queries({"classnames": [name], "retrieval_templates": [], "queries": [name_query(name)]},
                              "all_tokens").to_pylist()
    assert _ours(captions, [r["terms"] for r in table]) == rows(reference) != set()
    # the reference's DTD query: '"{c} texture" OR "{c} pattern" OR ...'
    templates = ["{c} tower", "{c} art", "{c} coat"]
    for name in ("東京", "naïve", "golden"):
        reference = " OR ".join(f'"{t.format(c=name)}"' for t in templates)
        table = retrieval_queries({"classnames": [name], "retrieval_templates": [], "queries": [name_query(name)]},
                                  templates=templates).to_pylist()
        assert _ours(captions, [r["terms"] for r in table]) == rows(reference)


def test_tokens_agree_with_fts5_on_common_scripts():
    """Every character of the Latin, Greek, Cyrillic, CJK and general punctuation blocks, between two
    letters, tokenizes as FTS5 tokenizes it (one document per character)."""
    blocks = [(0x20, 0x250), (0x384, 0x3D0), (0x400, 0x482), (0x48A, 0x500), (0x1E00, 0x1F00), (0x2000, 0x2064),
              (0x3041, 0x3097), (0x4E00, 0x4F00)]
    chars = [chr(c) for lo, hi in blocks for c in range(lo, hi)
             if unicodedata.category(chr(c)) != "Cn"]  # unassigned: SQLite takes them for letters
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
    db.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", [(i, f"a{c}a") for i, c in enumerate(chars)])
    theirs: dict[int, list] = {}
    for term, doc, _, offset in db.execute("SELECT term, doc, col, offset FROM v"):
        theirs.setdefault(doc, []).append((offset, term))
    wrong = [(hex(ord(c)), c) for i, c in enumerate(chars)
             if tokens(f"a{c}a") != tuple(t for _, t in sorted(theirs.get(i, [])))]
    assert wrong == []


# ---------------------------------------------------------------- the vectorised path


@pytest.mark.parametrize("batch_rows", [7, 1000, 65536])
def test_scan_parquet_finds_what_the_caption_by_caption_check_finds(tmp_path, batch_rows):
    """scan_parquet tokenizes ASCII captions with array operations and sends the rest through
    TermMatcher.match: its hits, in order, are the caption-by-caption check's."""
    captions = _captions(3000, seed=3) + [None, "", "A RED star!", "red_star", "golden-retriever puppy"]
    queries = [(i, n, t) for i, n in enumerate(ORACLE_NAMES) for t in name_query(n)] + [
        (99, "rose AND flower", ["rose", "flower"]), (98, "star AND star", ["star", "star"]),
        (97, "St. Bernard", ["St. Bernard"]), (96, "golden AND golden retriever", ["golden", "golden retriever"])]
    matcher = TermMatcher(queries)
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(len(captions)), pa.int64()),
                             "URL": [f"u{i}" for i in range(len(captions))], "TEXT": pa.array(captions, pa.string())}),
                   path)
    table = scan_parquet(str(path), matcher, {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT"}, batch_rows)
    expected = [(alt.label, alt.query, str(i)) for i, c in enumerate(captions) for alt in matcher.match(c or "")]
    assert list(zip(table.column("label").to_pylist(), table.column("query").to_pylist(),
                    table.column("id").to_pylist())) == expected
    assert any(not (c or "").isascii() for c in captions) and len(expected) > 500


def test_terms_too_long_for_an_exact_key_take_the_slow_way():
    words = [f"w{i}" for i in range(40)]
    long_term = " ".join(words[:20])
    matcher = TermMatcher([(0, "long", [long_term]), (1, "short", ["w3 w4"])])
    assert matcher.exact_len < 20
    captions = pa.array([long_term, "x " + long_term + " y", " ".join(words[:19]), "w3 w4", "w4 w3", "W0 w1"])
    rows, alts = matcher.match_batch(captions)
    assert list(zip(rows.tolist(), alts.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (3, 1)]


# ---------------------------------------------------------------- the Hyperscan path against the caption-by-caption check

import synret.substring as substring_module

RANDOM_WORDS = ["cat", "category", "cats", "dog", "hotdog", "hot", "x", "x1", "b2b", "16", "f", "red", "star", "starfish",
                "a", "of", "the", "new", "Cafe", "café", "naïve", "ab", "abc", "abcabc", "2012", "go", "goo"]
RANDOM_SEPARATORS = [" ", " ", " ", "-", "/", "_", ", ", ". ", "  ", "\n", "'", "(", ")", "!", "\t", "&"]


def _random_caption(rng: random.Random) -> str:
    words = [rng.choice(RANDOM_WORDS) for _ in range(rng.randint(0, 12))]
    if words and rng.random() < 0.3:
        words.append(words[0])  # a repeated word
    text = "".join(rng.choice([w, w.upper(), w.capitalize()]) + rng.choice(RANDOM_SEPARATORS) for w in words)
    return text if rng.random() < 0.5 else text.strip()


def _random_queries(rng: random.Random, n: int) -> list[tuple[int, str, list[str]]]:
    queries = []
    for label in range(n):
        words = [rng.choice(RANDOM_WORDS) for _ in range(rng.randint(1, 4))]
        name = rng.choice([" ", " ", "-", "/", "_"]).join(words)
        queries += [(label, name, terms) for terms in name_query(name)]
    return queries + [(n, "cat AND cat", ["cat", "cat"]), (n + 1, "red star AND star", ["red star", "star"])]


@pytest.mark.parametrize("use_hyperscan", [True, False])
@pytest.mark.parametrize("check_cost", [0.0, 2.0, 1e9])  # one anchor per query .. every word an anchor
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_batch_equals_the_caption_by_caption_check(monkeypatch, use_hyperscan, check_cost, seed):
    """Random captions and names (case, digits, underscores, hyphens, phrases, repeated words, names inside
    longer words): every path's matches, batch by batch and on a sliced array, are match_indices's."""
    if use_hyperscan:
        pytest.importorskip("hyperscan")
        monkeypatch.setattr(substring_module._AnchorScan, "check_cost", check_cost)
    else:
        monkeypatch.setattr(substring_module, "hyperscan", None)
    rng = random.Random(seed)
    captions = [_random_caption(rng) for _ in range(3000)] + [None, "", "CAT", "cat_category", "x1x", "f/16"]
    matcher = TermMatcher(_random_queries(rng, 60))
    expected = [(row, alt) for row, text in enumerate(captions) for alt in matcher.match_indices(text or "")]
    assert len(expected) > 1000
    array = pa.array(["padding"] * 7 + captions, pa.string()).slice(7)  # an offset into the buffers
    for size in (len(captions), 500, 1):
        got = []
        for start in range(0, len(captions), size) if size > 1 else range(0, 200):
            rows, alts = matcher.match_batch(array.slice(start, size))
            got += [(start + r, a) for r, a in zip(rows.tolist(), alts.tolist())]
        assert got == (expected if size > 1 else [m for m in expected if m[0] < 200])


def test_anchor_scan_settles_or_checks_every_kind_of_query():
    pytest.importorskip("hyperscan")
    matcher = TermMatcher([(0, "cat", ["cat"]), (1, "red star", ["red star"]), (2, "cat AND dog", ["cat", "dog"]),
                           (3, "café", ["café"])])
    captions = pa.array(["a cat", "category", "red-star", "red big star", "dog, CAT", "café cat", "cat_dog", "CAFE"])
    rows, alts = matcher.match_batch(captions)
    assert list(zip(rows.tolist(), alts.tolist())) == [
        (0, 0), (2, 1), (4, 0), (4, 2), (5, 0), (5, 3), (6, 0), (6, 2), (7, 3)]
    assert matcher._scan.settles.tolist() == [True, False, True, True]  # a phrase's candidates are checked
