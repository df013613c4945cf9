"""Tests of synret.knn: clip-retrieval's index folder layout, searched with real faiss."""

from __future__ import annotations

import re

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synret.knn import KnnIndex, build_index, knn_hits, near_duplicates, write_index_folder

COLUMNS = {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "nsfw": "NSFW"}


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _metadata(n: int) -> pa.Table:
    return pa.table(
        {
            "SAMPLE_ID": pa.array(np.arange(5000, 5000 + n), pa.int64()),
            "URL": [f"http://127.0.0.1:1/{i}.png" for i in range(n)],
            "TEXT": [f"caption {i}" for i in range(n)],
            "NSFW": [("NSFW" if i % 7 == 0 else "UNLIKELY") for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, d = 200, 16
    return _unit(rng, n, d), _unit(rng, n, d), _unit(rng, 12, d)


@pytest.fixture(scope="module")
def flat_folder(data, tmp_path_factory):
    image, text, _ = data
    return write_index_folder(tmp_path_factory.mktemp("flat"), image, text, _metadata(len(image)))


def test_layout(flat_folder, data):
    image, text, _ = data
    assert (flat_folder / "image.index").is_file()
    assert (flat_folder / "text.index").is_file()
    assert (flat_folder / "metadata" / "metadata_0.parquet").is_file()
    assert pq.read_table(flat_folder / "metadata" / "metadata_0.parquet").equals(_metadata(len(image)))
    for name, emb in (("image", image), ("text", text)):
        index = faiss.read_index(str(flat_folder / f"{name}.index"))
        assert index.ntotal == len(emb)
        assert index.metric_type == faiss.METRIC_INNER_PRODUCT
        # id i is row i of the embeddings
        np.testing.assert_allclose(index.reconstruct(3), emb[3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_flat_search_is_exact(flat_folder, data, modality):
    image, text, queries = data
    base = image if modality == "image" else text
    scores, ids = KnnIndex(flat_folder).search(queries, modality, 10)
    assert scores.shape == ids.shape == (len(queries), 10)
    sims = queries @ base.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


def test_k_larger_than_index(tmp_path):
    rng = np.random.default_rng(1)
    emb = _unit(rng, 5, 8)
    write_index_folder(tmp_path, emb, emb, _metadata(5))
    scores, ids = KnnIndex(tmp_path).search(emb[:2], "image", 50)
    assert ids.shape == (2, 5)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]
    assert ids[0, 0] == 0 and ids[1, 0] == 1


def test_ivf_factory(tmp_path):
    rng = np.random.default_rng(2)
    emb = _unit(rng, 400, 16)
    write_index_folder(tmp_path, emb, emb[::-1].copy(), _metadata(400), factory="IVF4,Flat")
    knn = KnnIndex(tmp_path)
    index = knn.index("image")
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat)
    assert index.ntotal == 400
    # a stored vector finds itself first (it lies in the list its query probes)
    scores, ids = knn.search(emb[:30], "image", 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(30))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    # every returned score is the true inner product of the returned vector, best first
    queries = _unit(rng, 10, 16)
    scores, ids = knn.search(queries, "text", 8)
    text = emb[::-1]
    for q in range(len(queries)):
        valid = ids[q] >= 0
        assert valid.sum() >= 1
        np.testing.assert_allclose(scores[q][valid], text[ids[q][valid]] @ queries[q], atol=1e-5)
        assert np.all(np.diff(scores[q][valid]) <= 1e-6)


def test_build_index_ip_metric():
    rng = np.random.default_rng(3)
    emb = _unit(rng, 50, 8)
    index = build_index(emb.astype(np.float64))  # any float dtype is accepted
    scores, ids = index.search(emb[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_metadata_parts_concatenate_in_name_order(tmp_path):
    rng = np.random.default_rng(4)
    emb = _unit(rng, 10, 8)
    write_index_folder(tmp_path, emb, emb, _metadata(10))
    meta = _metadata(10)
    (tmp_path / "metadata" / "metadata_0.parquet").unlink()
    pq.write_table(meta.slice(6), tmp_path / "metadata" / "part_1.parquet")
    pq.write_table(meta.slice(0, 6), tmp_path / "metadata" / "part_0.parquet")
    knn = KnnIndex(tmp_path)
    assert knn.metadata.equals(meta)
    hits = knn_hits(knn, emb[[8]], [0], ["q"], ["image"], 1, COLUMNS)
    assert hits.column("id").to_pylist() == ["5008"]


# ---------------------------------------------------------------- knn_hits


def test_knn_hits_rows(flat_folder, data):
    image, text, queries = data
    q = queries[:3]
    labels, texts = [2, 0, 2], ["a red star", "a circle", "red star"]
    hits = knn_hits(KnnIndex(flat_folder), q, labels, texts, ["image", "text"], 4, COLUMNS)
    assert hits.column_names == ["label", "query", "method", "rank", "score", "id", "url", "caption", "nsfw"]
    assert hits.schema.field("label").type == pa.int32()
    assert hits.schema.field("score").type == pa.float32()
    for column in ("id", "url", "caption", "nsfw"):
        assert hits.schema.field(column).type == pa.string()
    assert hits.num_rows == 2 * 3 * 4
    rows = hits.to_pylist()
    i = 0
    for modality, base in (("image", image), ("text", text)):
        sims = q @ base.T
        for qi in range(3):
            expected = np.argsort(-sims[qi], kind="stable")[:4]
            for rank, row_id in enumerate(expected):
                row = rows[i]
                i += 1
                assert row["label"] == labels[qi]
                assert row["query"] == texts[qi]
                assert row["method"] == f"knn_{modality}"
                assert row["rank"] == rank
                assert row["score"] == pytest.approx(float(sims[qi, row_id]), abs=1e-5)
                assert row["id"] == str(5000 + row_id)
                assert row["url"] == f"http://127.0.0.1:1/{row_id}.png"
                assert row["caption"] == f"caption {row_id}"
                assert row["nsfw"] == ("NSFW" if row_id % 7 == 0 else "UNLIKELY")


def test_knn_hits_only_mapped_columns(flat_folder, data):
    _, _, queries = data
    hits = knn_hits(KnnIndex(flat_folder), queries[:1], [0], ["q"], ["text"], 2, {"id": "SAMPLE_ID", "url": "URL",
                                                                                   "caption": "TEXT", "nsfw": None})
    assert hits.column_names == ["label", "query", "method", "rank", "score", "id", "url", "caption"]
    assert set(hits.column("method").to_pylist()) == {"knn_text"}


def test_knn_hits_no_queries(flat_folder):
    hits = knn_hits(KnnIndex(flat_folder), np.zeros((0, 16), np.float32), [], [], ["image"], 3, COLUMNS)
    assert hits.num_rows == 0
    assert "id" in hits.column_names


def test_knn_hits_missing_metadata_column(flat_folder, data):
    _, _, queries = data
    columns = {**COLUMNS, "url": "url"}
    with pytest.raises(KeyError) as info:
        knn_hits(KnnIndex(flat_folder), queries[:1], [0], ["q"], ["image"], 2, columns)
    assert "'url'" in str(info.value)
    assert "pool.columns.url" in str(info.value)


# ---------------------------------------------------------------- errors


def test_write_mismatched_rows(tmp_path):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="same number of rows"):
        write_index_folder(tmp_path / "a", _unit(rng, 10, 8), _unit(rng, 9, 8), _metadata(10))
    with pytest.raises(ValueError, match="same number of rows"):
        write_index_folder(tmp_path / "b", _unit(rng, 10, 8), _unit(rng, 10, 8), _metadata(11))
    assert not (tmp_path / "a" / "image.index").exists()


def test_index_metadata_row_mismatch(tmp_path):
    rng = np.random.default_rng(6)
    emb = _unit(rng, 10, 8)
    write_index_folder(tmp_path, emb, emb, _metadata(10))
    pq.write_table(_metadata(3), tmp_path / "metadata" / "metadata_1.parquet")
    knn = KnnIndex(tmp_path)
    with pytest.raises(ValueError, match=r"10 vectors but 13 metadata rows") as info:
        knn.search(emb[:1], "image", 2)
    assert "image.index" in str(info.value)


def test_folder_without_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        KnnIndex(tmp_path)


def test_missing_index_file(tmp_path):
    rng = np.random.default_rng(7)
    emb = _unit(rng, 10, 8)
    write_index_folder(tmp_path, emb, emb, _metadata(10))
    (tmp_path / "text.index").unlink()
    knn = KnnIndex(tmp_path)
    knn.search(emb[:1], "image", 1)
    with pytest.raises(FileNotFoundError, match=re.escape("text.index")):
        knn.search(emb[:1], "text", 1)


def test_unknown_modality(flat_folder, data):
    with pytest.raises(ValueError, match="'audio'"):
        KnnIndex(flat_folder).search(data[2][:1], "audio", 1)


def test_ivf_nprobe_restores_exact_recall(tmp_path):
    rng = np.random.default_rng(7)
    emb = _unit(rng, 400, 16)
    write_index_folder(tmp_path, emb, emb.copy(), _metadata(400), factory="IVF8,Flat")
    queries = _unit(rng, 20, 16)
    exact = np.argsort(-(queries @ emb.T), axis=1)[:, :10]
    index = KnnIndex(tmp_path)
    _, one_list = index.search(queries, "image", 10, nprobe=1)
    _, all_lists = index.search(queries, "image", 10, nprobe=8)
    recall = lambda ids: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])  # noqa: E731
    assert recall(all_lists) == 1.0
    assert recall(one_list) < 0.9


# ---------------------------------------------------------------- clip-retrieval's dedup among results


def _normed(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def test_near_duplicates_groups_chains_and_keeps_the_first():
    rng = np.random.default_rng(0)
    base = _normed(rng.normal(size=(4, 32)))
    # 0, 2, 5 are one chain (0~2 and 2~5 above 0.94, 0~5 below); 1 and 3 are alone; 4 copies 1
    step = _normed(rng.normal(size=32))
    a = base[0]
    b = _normed(a + 0.3 * step)
    c = _normed(b + 0.3 * _normed(step + rng.normal(size=32)))
    vectors = np.stack([a, base[1], b, base[2], base[1] * 2.0, c])  # unnormalised copy: normalised first
    assert a @ b > 0.94 and b @ c > 0.94 and a @ c < 0.94
    assert near_duplicates(vectors) == {2, 4, 5}
    # reversed (c, copy of 1, base 2, b, base 1, a): again the first of each group stays
    assert near_duplicates(vectors[::-1]) == {3, 4, 5}
    assert near_duplicates(vectors[:1]) == set() and near_duplicates(vectors[:0]) == set()


def test_near_duplicates_threshold_is_strict():
    a = np.array([1.0, 0.0], np.float32)
    for sim, dup in ((0.95, True), (0.93, False)):
        b = np.array([sim, np.sqrt(1 - sim ** 2)], np.float32)
        assert near_duplicates(np.stack([a, b])) == ({1} if dup else set())


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_deduplicated_search_drops_planted_copies(tmp_path, factory):
    rng = np.random.default_rng(1)
    emb = _normed(rng.normal(size=(200, 16)))
    emb[150:160] = _normed(emb[100:110] + 0.01 * rng.normal(size=(10, 16)))  # near-copies of 100..109
    meta = pa.table({"SAMPLE_ID": pa.array(np.arange(200), pa.int64())})
    folder = write_index_folder(tmp_path / "idx", emb, emb, meta, factory)
    index = KnnIndex(folder)
    queries = _normed(emb[100:110] + 0.05 * rng.normal(size=(10, 16)))
    scores, ids = index.search(queries, "image", 8, nprobe=4)
    dscores, dids = index.search(queries, "image", 8, nprobe=4, deduplicate=True)
    for q in range(10):
        # every copy pair found together loses its lower-ranked member, and nothing else is lost
        found = list(ids[q])
        pairs = {(i, i + 50) for i in range(100, 110)}
        expected = [i for n, i in enumerate(found)
                    if not any({i, j} == set(p) and found.index(j) < n for p in pairs for j in p if j in found)]
        assert list(dids[q][: len(expected)]) == expected
        assert (dids[q][len(expected):] == -1).all() and np.isneginf(dscores[q][len(expected):]).all()
        assert np.allclose(dscores[q][: len(expected)], [scores[q][found.index(i)] for i in expected])
        assert len(expected) < 8  # the query's own neighbour and its copy were both among the results
    hits = knn_hits(index, queries, list(range(10)), [f"q{i}" for i in range(10)], ["image"], 8,
                    {"id": "SAMPLE_ID"}, nprobe=4, deduplicate=True)
    assert hits.num_rows == int((dids >= 0).sum())
    assert max(hits.column("rank").to_pylist()) < 8
