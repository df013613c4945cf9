"""Tests of synret.substring: whole-token caption matching and the parquet scan."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synret.substring import TermMatcher, scan_parquet, tokens

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
    assert tokens("Café") == ("café",)
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
    "CAFÉ with a circle",          # 7: circle, café
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
