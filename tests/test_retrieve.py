"""Tests of synret.retrieve.merge_candidates: kNN and substring hits unioned per (class, pool item)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synret.retrieve import merge_candidates


def _knn(rows: list[tuple]) -> pa.Table:
    """rows: (label, query, method, score, id, nsfw); url and caption derive from the id."""
    label, query, method, score, ids, nsfw = zip(*rows)
    return pa.table(
        {
            "label": pa.array(label, pa.int32()),
            "query": pa.array(query, pa.string()),
            "method": pa.array(method, pa.string()),
            "rank": pa.array(range(len(rows)), pa.int64()),
            "score": pa.array(score, pa.float32()),
            "id": pa.array(ids, pa.string()),
            "url": pa.array([f"http://h/{i}.png" for i in ids], pa.string()),
            "caption": pa.array([f"caption {i}" for i in ids], pa.string()),
            "nsfw": pa.array(nsfw, pa.string()),
        }
    )


def _substring(rows: list[tuple]) -> pa.Table:
    """rows: (label, query, id, nsfw), in scan_parquet's layout (no method, no score)."""
    label, query, ids, nsfw = zip(*rows)
    return pa.table(
        {
            "label": pa.array(label, pa.int32()),
            "query": pa.array(query, pa.string()),
            "id": pa.array(ids, pa.string()),
            "url": pa.array([f"http://h/{i}.png" for i in ids], pa.string()),
            "caption": pa.array([f"caption {i}" for i in ids], pa.string()),
            "nsfw": pa.array(nsfw, pa.string()),
        }
    )


@pytest.fixture
def merged():
    knn = _knn(
        [
            (0, "a photo of a star", "knn_image", 0.50, "10", "UNLIKELY"),
            (0, "a star", "knn_image", 0.70, "10", "UNLIKELY"),
            (0, "a star", "knn_text", 0.60, "10", "UNLIKELY"),
            (0, "a star", "knn_image", 0.40, "11", "NSFW"),
            (0, "a star", "knn_text", 0.30, "12", None),
            (1, "a circle", "knn_image", 0.20, "10", "UNLIKELY"),  # the same pool item for another class
            (1, "a circle", "knn_text", 0.25, "13", "UNSURE"),
        ]
    )
    substring = _substring(
        [
            (0, "star", "10", "UNLIKELY"),
            (0, "star", "14", None),
            (0, "star", "11", "NSFW"),
            (1, "circle", "15", "NSFW"),
            (1, "circle", "13", "UNSURE"),
        ]
    )
    return merge_candidates(knn, substring, ["NSFW"])


def test_schema(merged):
    table, _ = merged
    assert table.schema == pa.schema(
        [("label", pa.int32()), ("id", pa.string()), ("url", pa.string()), ("caption", pa.string()),
         ("query", pa.string()), ("methods", pa.string()), ("score", pa.float32()), ("planted_from", pa.string())]
    )
    assert table.column("planted_from").null_count == table.num_rows  # the hits named no planted copies


def test_one_row_per_label_and_id(merged):
    table, _ = merged
    pairs = list(zip(table.column("label").to_pylist(), table.column("id").to_pylist()))
    assert pairs == [(0, "10"), (0, "12"), (0, "14"), (1, "10"), (1, "13")]


def test_methods_and_scores(merged):
    table, _ = merged
    rows = {(r["label"], r["id"]): r for r in table.to_pylist()}
    both = rows[(0, "10")]
    assert both["methods"] == "knn_image+knn_text+substring"
    assert both["score"] == pytest.approx(0.70)
    assert both["query"] == "a star"  # the query of the best-scoring hit
    assert both["url"] == "http://h/10.png" and both["caption"] == "caption 10"
    assert rows[(0, "12")]["methods"] == "knn_text"
    assert rows[(0, "12")]["score"] == pytest.approx(0.30)
    only_substring = rows[(0, "14")]
    assert only_substring["methods"] == "substring"
    assert only_substring["score"] is None  # no kNN score: null, not 0
    assert only_substring["query"] == "star"
    assert rows[(1, "13")]["methods"] == "knn_text+substring"
    assert rows[(1, "13")]["score"] == pytest.approx(0.25)


def test_item_retrieved_for_two_labels_stays_twice(merged):
    table, counts = merged
    rows = [r for r in table.to_pylist() if r["id"] == "10"]
    assert [(r["label"], r["methods"]) for r in rows] == [(0, "knn_image+knn_text+substring"), (1, "knn_image")]
    assert rows[1]["score"] == pytest.approx(0.20)
    assert counts["unique_urls"] == 4  # 10, 12, 13, 14


def test_nsfw_rows_dropped_and_counted(merged):
    table, counts = merged
    assert "11" not in table.column("id").to_pylist()
    assert "15" not in table.column("id").to_pylist()
    assert counts["nsfw_dropped_hits"] == 3


def test_counts(merged):
    _, counts = merged
    assert counts == {
        "hits": 12,
        "hits_by_method": {"knn_image": 4, "knn_text": 3, "substring": 5},
        "nsfw_dropped_hits": 3,
        "candidates_before_cap": 5,
        "candidates": 5,
        "candidates_per_class": {0: 3, 1: 2},
        "unique_urls": 4,
    }


def test_drop_nsfw_values_are_configurable():
    knn = _knn([(0, "q", "knn_image", 0.5, "1", "UNSURE"), (0, "q", "knn_image", 0.4, "2", "NSFW")])
    table, counts = merge_candidates(knn, None, ["UNSURE", "NSFW"])
    assert table.num_rows == 0 and counts["nsfw_dropped_hits"] == 2
    table, counts = merge_candidates(knn, None, [])
    assert table.column("id").to_pylist() == ["1", "2"] and counts["nsfw_dropped_hits"] == 0


def test_substring_only():
    table, counts = merge_candidates(None, _substring([(2, "x", "7", None), (2, "y", "7", None)]), ["NSFW"])
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert (row["label"], row["id"], row["methods"]) == (2, "7", "substring")
    assert counts["hits"] == 2 and counts["candidates"] == 1 and counts["candidates_per_class"] == {2: 1}


def test_substring_without_nsfw_column():
    substring = _substring([(0, "x", "7", None)]).drop_columns(["nsfw"])
    table, counts = merge_candidates(None, substring, ["NSFW"])
    assert table.column("id").to_pylist() == ["7"] and counts["nsfw_dropped_hits"] == 0


def test_no_hits():
    table, counts = merge_candidates(None, None, ["NSFW"])
    assert table.num_rows == 0
    assert table.column_names == ["label", "id", "url", "caption", "query", "methods", "score", "planted_from"]
    assert counts["hits"] == 0 and counts["candidates"] == 0 and counts["candidates_per_class"] == {}


def test_cap_per_class_is_stable_and_nested():
    rows = [(label, "q", "knn_image", 0.5, str(i), "UNLIKELY") for label in (0, 1) for i in range(label * 100, label * 100 + 30)]
    capped = {}
    for cap in (5, 10, None):
        table, counts = merge_candidates(_knn(rows), None, ["NSFW"], max_per_class=cap)
        capped[cap] = table.to_pandas()
        assert counts["candidates_before_cap"] == 60
    assert capped[5].groupby("label").size().tolist() == [5, 5]
    assert len(capped[None]) == 60
    for label in (0, 1):
        small = set(capped[5].loc[capped[5]["label"] == label, "id"])
        large = set(capped[10].loc[capped[10]["label"] == label, "id"])
        assert small < large
    shuffled, _ = merge_candidates(_knn(rows[::-1]), None, ["NSFW"], max_per_class=5)
    assert set(shuffled.column("id").to_pylist()) == set(capped[5]["id"])


def test_planted_from_is_carried_to_the_candidates():
    knn = pa.table({"label": pa.array([0, 0], pa.int32()), "query": ["q", "q"], "method": ["knn_image", "knn_text"],
                    "score": pa.array([0.9, 0.8], pa.float32()), "id": ["7", "7"], "url": ["u7", "u7"],
                    "caption": ["c", "c"], "nsfw": ["UNLIKELY", "UNLIKELY"],
                    "planted_from": ["shapes/test/circle/000.png", "shapes/test/circle/000.png"]})
    substring = pa.table({"label": pa.array([0], pa.int32()), "query": ["circle"], "id": ["8"], "url": ["u8"],
                          "caption": ["a circle"], "nsfw": ["UNLIKELY"], "planted_from": pa.array([None], pa.string())})
    table, _ = merge_candidates(knn, substring, ["NSFW"])
    assert dict(zip(table.column("id").to_pylist(), table.column("planted_from").to_pylist())) == {
        "7": "shapes/test/circle/000.png", "8": None}


def test_a_random_pool_sample_is_seeded_nested_and_blind_to_the_parts(tmp_path):
    import pyarrow.parquet as pq

    from synret.retrieve import random_pool_sample

    n = 500
    table = pa.table({"SAMPLE_ID": [str(i) for i in range(n)], "URL": [f"http://h/{i}.png" for i in range(n)],
                      "TEXT": [f"caption {i}" for i in range(n)], "NSFW": ["NSFW" if i % 10 == 0 else "UNLIKELY" for i in range(n)]})
    columns = {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "nsfw": "NSFW"}
    one = tmp_path / "one.parquet"
    pq.write_table(table, one)
    parts = []
    for i, start in enumerate(range(0, n, 130)):  # the same rows in other parts, another order
        parts.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(table.slice(start, 130).take(pa.array(list(range(min(130, n - start)))[::-1])), parts[-1])
    small, counts = random_pool_sample([str(one)], columns, 40, seed=0, drop_nsfw=["NSFW"], batch_rows=64)
    again, _ = random_pool_sample([str(p) for p in reversed(parts)], columns, 40, seed=0, drop_nsfw=["NSFW"])
    large, _ = random_pool_sample([str(one)], columns, 120, seed=0, drop_nsfw=["NSFW"])
    other, _ = random_pool_sample([str(one)], columns, 40, seed=1, drop_nsfw=["NSFW"])
    ids = set(small.column("id").to_pylist())
    assert small.num_rows == 40 and ids == set(again.column("id").to_pylist())
    assert ids <= set(large.column("id").to_pylist()) and ids != set(other.column("id").to_pylist())
    assert not any(int(i) % 10 == 0 for i in large.column("id").to_pylist())  # NSFW rows are never drawn
    assert set(small.column("label").to_pylist()) == {-1} and counts["nsfw_dropped"] == 50
    spread = sorted(int(i) for i in large.column("id").to_pylist())
    assert spread[0] < 50 and spread[-1] > 450  # drawn from all over the pool, not its first rows
