"""The clip-retrieval kNN-service client, against a real `clip-retrieval back` on loopback.

The server runs in its own venv (clip-retrieval 2.45 pins numpy<2, pyarrow<16, open_clip<3), made by
.ci/clip_retrieval_env.sh from envs/clip-retrieval.yaml; it serves an index that the project builds
(synret.knn.write_index_folder over the tiny CLIP's embeddings) and loads that tiny CLIP itself, so
text queries are embedded by the server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from synret import knn_client
from synret.knn import KnnIndex, knn_hits, service_hits, write_index_folder
from synret.knn_client import KnnServiceClient, KnnServiceError, base_url, knn_settings, service_settings

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SYNRET_CLIP_RETRIEVAL_VENV", REPO / ".venvs" / "clip-retrieval"))
COLUMNS = {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "nsfw": "NSFW"}
SHAPES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring", "heart", "crescent"]
COLORS = ["red", "blue", "green", "yellow"]
QUERIES = ["a photo of a red star.", "a blue circle", "a green heart shape.", "ring"]

needs_service = pytest.mark.skipif(
    not (VENV / "bin" / "clip-retrieval").exists(),
    reason=f"no clip-retrieval venv at {VENV} (create it with .ci/clip_retrieval_env.sh)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.fixture(scope="module")
def pool_index(tiny_clip_dir, shape_images, tmp_path_factory):
    """An index folder built by the project: the tiny CLIP's image and caption embeddings."""
    from synret.clip import encode_texts, load_clip
    from synret.embed import embed_images

    images, labels = shape_images
    captions = [f"a {COLORS[i % 4]} {SHAPES[label]}" + (" on a grid" if i % 3 == 0 else "")
                for i, label in enumerate(labels)]
    metadata = pa.table({
        "SAMPLE_ID": pa.array(np.arange(9000, 9000 + len(images)), pa.int64()),
        "URL": [f"http://127.0.0.1:1/{i:05d}.png" for i in range(len(images))],
        "TEXT": captions,
        "NSFW": ["NSFW" if i % 11 == 0 else "UNLIKELY" for i in range(len(images))],
    })
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    folder = tmp_path_factory.mktemp("service_index") / "index"
    write_index_folder(folder, embed_images(clip, list(images), batch_size=64), encode_texts(clip, captions).numpy(),
                       metadata)
    return folder, clip


@pytest.fixture(scope="module")
def service(pool_index, tiny_clip_dir, tmp_path_factory):
    """A real `clip-retrieval back` serving the index on 127.0.0.1; yields (client, start seconds)."""
    if not (VENV / "bin" / "clip-retrieval").exists():
        pytest.skip(f"no clip-retrieval venv at {VENV} (create it with .ci/clip_retrieval_env.sh)")
    folder, _ = pool_index
    work = tmp_path_factory.mktemp("clip_back")
    spec = knn_client.clip_model_spec(tiny_clip_dir, knn_client.open_clip_config_dir(VENV))
    indices = {"tiny": {"indice_folder": str(folder), "clip_model": spec, "columns_to_return": list(COLUMNS.values()),
                        "enable_mclip_option": False, "use_jit": False, "provide_aesthetic_embeddings": False}}
    (work / "indices.json").write_text(json.dumps(indices))
    port = _free_port()
    log = open(work / "server.log", "w")
    command = [str(VENV / "bin" / "python"), knn_client.__file__, "serve", "--indices_paths", str(work / "indices.json"),
               "--port", str(port), "--enable_mclip_option", "False", "--use_jit", "False",
               "--provide_aesthetic_embeddings", "False"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
    start, url = time.time(), f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"clip-retrieval back exited with {proc.returncode}:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/indices-list", timeout=2).read()
                break
            except OSError:
                if time.time() - start > 240:
                    pytest.fail(f"clip-retrieval back not up after 240 s:\n{(work / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield KnnServiceClient(url, "tiny", retries=0), round(time.time() - start, 1), port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _comparable(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    for row in rows:
        row["score"] = round(row["score"], 4)
    return rows


# ---------------------------------------------------------------- against the real server


@needs_service
def test_server_starts_and_lists_the_project_index(service):
    client, seconds, _ = service
    print(f"clip-retrieval back answered after {seconds} s")
    assert client.indices() == ["tiny"]


@needs_service
def test_server_listens_on_loopback_only(service):
    _, _, port = service
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, little-endian hex


@needs_service
@pytest.mark.parametrize("modality", ["image", "text"])
def test_embedding_queries_match_the_local_index(service, pool_index, modality):
    from synret.clip import encode_texts

    client, _, _ = service
    folder, clip = pool_index
    emb = encode_texts(clip, QUERIES).numpy()
    labels = [5, 0, 8, 7]
    local = knn_hits(KnnIndex(folder), emb, labels, QUERIES, [modality], 7, COLUMNS)
    remote = service_hits(client, emb, labels, QUERIES, [modality], 7, COLUMNS, parallel=3)
    assert remote.schema.equals(local.schema)
    assert remote.num_rows == len(QUERIES) * 7
    assert _comparable(remote) == _comparable(local)


@needs_service
@pytest.mark.parametrize("modality", ["image", "text"])
def test_deduplicated_queries_match_the_server(service, pool_index, modality):
    """clip-retrieval's dedup among results (deduplicate=True) and the local faiss path's drop the same
    results: the pool's captions repeat, so text-to-text results have many duplicates."""
    from synret.clip import encode_texts

    client, _, _ = service
    folder, clip = pool_index
    dedup_client = KnnServiceClient(client.url, "tiny", retries=0, deduplicate=True)
    emb = encode_texts(clip, QUERIES).numpy()
    labels = [5, 0, 8, 7]
    local = knn_hits(KnnIndex(folder), emb, labels, QUERIES, [modality], 20, COLUMNS, deduplicate=True)
    remote = service_hits(dedup_client, emb, labels, QUERIES, [modality], 20, COLUMNS, parallel=3)
    everything = knn_hits(KnnIndex(folder), emb, labels, QUERIES, [modality], 20, COLUMNS)
    assert _comparable(remote) == _comparable(local)
    if modality == "text":
        assert local.num_rows < everything.num_rows


@needs_service
def test_text_queries_are_embedded_by_the_service_like_here(service, pool_index):
    """The server loaded the project's tiny CLIP (clip_model_spec): its text embeddings equal ours."""
    from synret.clip import encode_texts

    client, _, _ = service
    folder, clip = pool_index
    labels = [0, 1, 2, 3]
    local = knn_hits(KnnIndex(folder), encode_texts(clip, QUERIES).numpy(), labels, QUERIES, ["image", "text"], 5,
                     COLUMNS)
    lines = []
    remote = service_hits(client, None, labels, QUERIES, ["image", "text"], 5, COLUMNS, log=lines.append)
    assert _comparable(remote) == _comparable(local)
    assert lines[-1].startswith(f"kNN queries: done, {2 * len(QUERIES)} requests in ")  # its progress, in the log
    # an indexed caption, queried as text, finds itself with similarity 1
    best = client.query(text="a red star", modality="text", k=1)[0]
    assert best["TEXT"] == "a red star" and best["similarity"] == pytest.approx(1.0, abs=1e-4)


@needs_service
def test_k_beyond_the_index_returns_every_item_once(service, pool_index):
    client, _, _ = service
    folder, clip = pool_index
    results = client.query(embedding=KnnIndex(folder).index("image").reconstruct(4), modality="image", k=500)
    assert len(results) == 120
    assert len({r["id"] for r in results}) == 120
    assert results[0]["id"] == 4 and results[0]["SAMPLE_ID"] == 9004
    assert [r["similarity"] for r in results] == sorted((r["similarity"] for r in results), reverse=True)


@needs_service
def test_service_index_row_can_serve_as_the_id(service, pool_index):
    client, _, _ = service
    _, clip = pool_index
    hits = service_hits(client, None, [0], ["a blue square"], ["text"], 3, {**COLUMNS, "id": "id"})
    assert all(i.isdigit() and int(i) < 120 for i in hits.column("id").to_pylist())


@needs_service
def test_query_many_streams_answers_in_order(service, pool_index):
    client, _, _ = service
    texts = [f"a {c} {s}" for c in COLORS for s in SHAPES[:5]]
    requests = ({"text": t, "modality": "text", "k": 1} for t in texts)  # a generator: drawn lazily
    answers = client.query_many(requests, parallel=3)
    assert not isinstance(answers, list)
    assert [a[0]["TEXT"] for a in answers] == texts  # each indexed caption finds itself, in request order
    logs = []
    hits = service_hits(client, None, [0] * 3, QUERIES[:3], ["text"], 2, {**COLUMNS, "caption": "URL"}, 1,
                        log=logs.append)
    assert hits.column("caption").equals(hits.column("url"))  # two roles may share one column


@needs_service
def test_missing_metadata_column_names_the_config_key(service):
    client, _, _ = service
    with pytest.raises(KeyError, match=r"'url'.*pool\.knn_service\.columns\.url"):
        service_hits(client, None, [0], ["a star"], ["image"], 2, {**COLUMNS, "url": "url"})


@needs_service
def test_unknown_index_name_is_a_clear_error(service):
    client, _, _ = service
    wrong = KnnServiceClient(client.url, "laion5B", retries=1, backoff=0.01)
    with pytest.raises(KnnServiceError) as info:
        wrong.query(text="a star", modality="image", k=3)
    message = str(info.value)
    assert f"{client.url}/knn-service" in message
    assert "HTTP 500" in message and "2 attempts" in message and "pool.knn_service.url" in message


# ---------------------------------------------------------------- without a server


def test_unreachable_service_retries_then_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    client = KnnServiceClient(url + "/knn-service", "x", retries=2, backoff=0.01, timeout=2)
    start = time.time()
    with pytest.raises(KnnServiceError) as info:
        client.query(text="a star", k=1)
    message = str(info.value)
    assert message.startswith(f"kNN service {url}/knn-service failed after 3 attempts")
    assert "refused" in message.lower()
    assert "config key 'pool.knn_service.url'" in message
    assert time.time() - start < 10


def test_query_arguments_are_checked():
    client = KnnServiceClient("http://127.0.0.1:9", "x")
    with pytest.raises(ValueError, match="exactly one"):
        client.query(text="a", embedding=[1.0], k=1)
    with pytest.raises(ValueError, match="exactly one"):
        client.query(k=1)
    with pytest.raises(ValueError, match="'audio'"):
        client.query(text="a", modality="audio", k=1)
    with pytest.raises(KnnServiceError, match=r"'127\.0\.0\.1:9'.*pool\.knn_service\.url"):
        KnnServiceClient("127.0.0.1:9")


def test_clip_retrieval_env_pins_what_was_verified():
    """envs/clip-retrieval.yaml (what .ci/clip_retrieval_env.sh installs) keeps the pins that resolve:
    clip-retrieval 2.45.0, setuptools<80 (its pkg_resources import), and our torch (from disk here)."""
    import re
    import tomllib

    import yaml

    env = yaml.safe_load((REPO / "envs" / "clip-retrieval.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "clip-retrieval==2.45.0" in pip and "setuptools<80" in pip
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("torch", "torchvision"):
        assert [r for r in pip if re.match(rf"{name}==", r)] == [r for r in ours if re.match(rf"{name}==", r)]
    script = (REPO / ".ci" / "clip_retrieval_env.sh").read_text()
    assert "envs/clip-retrieval.yaml" in script and ".ci/clip_retrieval_env.sh" in (REPO / ".ci" / "run").read_text()


def test_base_url_accepts_the_endpoint_or_the_root():
    assert base_url("http://h:1/knn-service") == base_url("http://h:1/") == base_url("http://h:1") == "http://h:1"


def test_settings_keep_a_local_index_configuration_unchanged():
    knn = {"enabled": True, "k": 15, "modalities": ["image", "text"], "nprobe": None}
    assert knn_settings(knn, {"knn_index": "results/world/index"}) == knn
    assert knn_settings(knn, {"knn_index": "x", "knn_service": None}) == knn
    assert service_settings({"knn_index": "x"}) is None


def test_settings_of_a_service_fill_defaults():
    knn = {"enabled": True, "k": 500, "modalities": ["image"], "nprobe": None}
    settings = knn_settings(knn, {"knn_service": {"url": "http://127.0.0.1:1234", "indice_name": "laion"}})
    assert settings["service"] == {"columns": None, "indice_name": "laion", "parallel": 4,
                                   "query": "embedding", "retries": 3, "timeout": 60.0, "url": "http://127.0.0.1:1234"}
    assert list(settings) == sorted(settings)  # canonical: sorted keys
    with pytest.raises(ValueError, match="pool.knn_service.query"):
        service_settings({"knn_service": {"url": "http://h:1", "query": "image"}})


def test_clip_model_spec_registers_the_config(tiny_clip_dir, tmp_path):
    spec = knn_client.clip_model_spec(tiny_clip_dir, tmp_path)
    arch, weights = spec[len("open_clip:"):].split("/", 1)
    assert spec.startswith("open_clip:synret-")
    assert weights == str(Path(tiny_clip_dir).resolve() / "open_clip_model.safetensors")
    config = json.loads((tmp_path / f"{arch}.json").read_text())
    assert config == json.loads((Path(tiny_clip_dir) / "open_clip_config.json").read_text())["model_cfg"]
    assert knn_client.clip_model_spec(tiny_clip_dir, tmp_path) == spec  # named by content: stable
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        knn_client.clip_model_spec(tmp_path, tmp_path)


# ---------------------------------------------------------------- through the workflow


@needs_service
@pytest.mark.slow
@pytest.mark.parametrize("query", ["embedding", "text"])
def test_workflow_knn_stage_queries_the_service(service, pool_index, shape_images, tiny_clip_dir, tmp_path, query):
    """The knn_query rule with pool.knn_service set: the same hits as the local index gives."""
    import subprocess
    import sys

    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import yaml
    from PIL import Image

    from synret.clip import encode_texts

    client, _, _ = service
    folder, clip = pool_index
    images, labels = shape_images
    for split in ("train", "val", "test"):
        for i in [i for c in range(3) for i in np.flatnonzero(labels == c)[:4]]:
            path = tmp_path / "dataset" / split / SHAPES[labels[i]] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
    (tmp_path / "pool").mkdir()
    pq.write_table(pq.read_table(folder / "metadata" / "metadata_0.parquet"), tmp_path / "pool" / "part-00000.parquet")
    overlay = {
        "world": None, "tasks": ["t"], "sources": ["retrieved"], "scales": [10], "seeds": [0],
        "clip": {"model": f"local-dir:{tiny_clip_dir}"},
        "pool": {"metadata": str(tmp_path / "pool" / "*.parquet"), "knn_index": None, "serve": None,
                 "knn_service": {"url": client.url, "indice_name": "tiny", "query": query, "parallel": 2}},
        "task_settings": {"t": {"dataset": {"format": "imagefolder", "root": str(tmp_path / "dataset")},
                                "templates": ["a photo of a {c}.", "a {c} shape."]}},
        "retrieval": {"knn": {"k": 6}, "substring": {"enabled": False}},
    }
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(REPO / "config.yaml"), str(tmp_path / "overlay.yaml"), "--cores", "1",
                           "results/retrieval/t/knn_hits.parquet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    hits = pq.read_table(tmp_path / "results" / "retrieval" / "t" / "knn_hits.parquet")
    queries = pq.read_table(tmp_path / "results" / "prompts" / "t" / "queries.parquet")
    queries = queries.filter(pc.equal(queries.column("kind"), "knn"))
    texts, qlabels = queries.column("query").to_pylist(), queries.column("label").to_pylist()
    assert len(texts) == 3 * 2
    local = knn_hits(KnnIndex(folder), encode_texts(clip, texts).numpy(), qlabels, texts, ["image", "text"], 6, COLUMNS)
    assert _comparable(hits) == _comparable(local)
    log = (tmp_path / "logs" / "retrieval" / "t" / "knn.log").read_text()
    assert f"kNN service {client.url} (index 'tiny', {query} queries)" in log
