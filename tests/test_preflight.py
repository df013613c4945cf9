"""The preflight: every model, dataset, pool and index a config names, checked at once, offline-testable.

Hub models are checked against a Hugging Face cache folder the tests lay out in the hub's own format
(models--org--name/refs/main + snapshots/<commit>/...), with HF_HUB_OFFLINE set, and against a hub
endpoint that does not answer (a closed loopback port) without it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synret.knn import write_index_folder
from synret.preflight import (
    PreflightError,
    check_causal_lm,
    check_diffusers,
    check_open_clip,
    preflight_problems,
    run_preflight,
)
from test_tasks_real_formats import CARS, make_aircraft, make_cars, make_dtd, make_flowers

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "nsfw": "NSFW"}
VIT_REPO = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"  # where open_clip fetches ViT-B-16 / laion2b_s34b_b88k
SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_FILES = ["model_index.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hub_cache(cache: Path, repo_id: str, files: list[str], commit: str = "0123456789abcdef" * 2 + "01234567") -> Path:
    """Files of a hub repo laid out as huggingface_hub caches them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name in files:
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")
    return cache


def closed_port_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def pool_folder(root: Path, columns: dict[str, str] = COLUMNS) -> Path:
    (root / "metadata").mkdir(parents=True)
    table = pa.table({columns[k]: pa.array(v) for k, v in
                      {"id": ["1", "2"], "url": ["http://a/1.jpg", "http://a/2.jpg"], "caption": ["a cat", "a dog"],
                       "nsfw": ["UNLIKELY", "NSFW"]}.items() if k in columns})
    pq.write_table(table, root / "metadata" / "part-00000.parquet")
    return root


def knn_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = pa.table({"SAMPLE_ID": ["1", "2"], "URL": ["http://a/1.jpg", "http://a/2.jpg"], "TEXT": ["a", "b"]})
    return write_index_folder(root, emb, emb, meta)


def generator_dir(root: Path) -> Path:
    """A folder with the files StableDiffusionPipeline.save_pretrained writes (contents not read here)."""
    for name in SD_FILES + ["tokenizer/vocab.json", "scheduler/scheduler_config.json"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    return root


@pytest.fixture
def complete(tmp_path, tiny_clip_dir) -> dict:
    """A spec whose every model, dataset, pool and index is present."""
    make_dtd(tmp_path / "datasets")
    make_aircraft(tmp_path / "datasets")
    make_cars(tmp_path / "datasets")
    pool = pool_folder(tmp_path / "pool")
    knn_folder(tmp_path / "index")
    return {
        "clip": {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None},
        "generators": {"synthetic": {"model": str(generator_dir(tmp_path / "sd")), "cache_dir": None}},
        "datasets": {"dtd": {"format": "dtd", "root": str(tmp_path / "datasets")},
                     "aircraft": {"format": "fgvc_aircraft", "root": str(tmp_path / "datasets")},
                     "cars": {**CARS, "root": str(tmp_path / "datasets")}},
        "pool": {"metadata": str(pool / "metadata" / "*.parquet"), "columns": COLUMNS,
                 "knn_index": str(tmp_path / "index")},
        "retrieval": {"substring": True, "knn_modalities": ["image", "text"]},
        "knn_model": f"local-dir:{tiny_clip_dir}",
    }


def test_everything_present_passes(complete):
    summary = run_preflight(complete)
    assert summary["checked"] == ["clip", "generators", "knn_model", "pool", "dataset:aircraft", "dataset:cars",
                                  "dataset:dtd"]
    assert summary["hub_offline"] is True


def test_every_missing_thing_is_listed_in_one_message(complete, tmp_path):
    spec = {**complete,
            "clip": {"model": "local-dir:/no/clip", "pretrained": None, "cache_dir": None},
            "generators": {"synthetic": {"model": str(tmp_path / "no_sd"), "cache_dir": None}},
            "datasets": {"dtd": {"format": "dtd", "root": str(tmp_path / "empty")},
                         "flowers": {"format": "flowers102", "root": str(tmp_path / "empty")}},
            "pool": {**complete["pool"], "metadata": str(tmp_path / "nopool" / "*.parquet"),
                     "knn_index": str(tmp_path / "noindex")}}
    with pytest.raises(PreflightError) as info:
        run_preflight(spec)
    message = str(info.value)
    assert message.startswith("preflight: 6 thing(s)")
    for key in ("clip.model", "generator.model", "task_settings.dtd.dataset.root",
                "task_settings.flowers.dataset.root", "pool.metadata", "pool.knn_index"):
        assert f"config key '{key}'" in message
    assert "dtd-r1.0.1.tar.gz" in message and "flowers-102" in message  # how to get them
    assert message.count("how to get it:") == 6


def test_incomplete_dataset_names_the_missing_file(complete, tmp_path):
    (tmp_path / "datasets" / "stanford_cars" / "devkit" / "cars_meta.mat").unlink()
    problems = preflight_problems(complete)
    assert [p.key for p in problems] == ["task_settings.cars.dataset.root"]
    assert "cars_meta.mat" in problems[0].what and "pytorch/vision#7545" in problems[0].how


def test_pool_without_the_configured_columns(complete, tmp_path):
    pool_folder(tmp_path / "coyo", {"id": "id", "url": "url", "caption": "text"})
    spec = {**complete, "pool": {**complete["pool"], "metadata": str(tmp_path / "coyo" / "metadata" / "*.parquet")}}
    (problem,) = preflight_problems(spec)
    assert problem.key == "pool.columns"
    assert "caption='TEXT'" in problem.what and "it has id, text, url" in problem.what


def test_index_lacking_a_modality(complete, tmp_path):
    (tmp_path / "index" / "text.index").unlink()
    (problem,) = preflight_problems(complete)
    assert problem.key == "pool.knn_index" and "text.index" in problem.what
    assert not preflight_problems({**complete, "retrieval": {"substring": True, "knn_modalities": ["image"]}})


def test_no_pool_check_without_the_retrieved_source(complete):
    spec = {k: v for k, v in complete.items() if k not in ("pool", "retrieval", "knn_model")}
    spec["datasets"] = {}
    assert run_preflight(spec)["checked"] == ["clip", "generators"]


def test_missing_caption_files_are_named_with_their_download_url(complete, tmp_path):
    present = tmp_path / "ref" / "ds_background_dict.json"
    present.parent.mkdir()
    present.write_text("{}")
    files = [{"path": str(tmp_path / "ref" / "utils.py"), "key": "prompts.llm.examples_file", "tasks": ["cars", "dtd"]},
             {"path": str(present), "key": "task_settings.cars.prompts.llm.backgrounds_file.path", "tasks": ["cars"]},
             {"path": str(tmp_path / "mine.json"), "key": "task_settings.dtd.prompts.llm.backgrounds_file.path",
              "tasks": ["dtd"]}]
    problems = preflight_problems({**complete, "caption_files": files})
    assert [p.key for p in problems] == ["prompts.llm.examples_file",
                                         "task_settings.dtd.prompts.llm.backgrounds_file.path"]
    assert str(tmp_path / "ref" / "utils.py") in problems[0].what and "tasks: cars, dtd" in problems[0].what
    assert ("https://raw.githubusercontent.com/scottgeng00/unmet-promise/main/data_sourcing/synthetic/helper/utils.py"
            in problems[0].how)
    assert "README" in problems[1].how  # not a reference file name: the formats, not an URL
    assert "caption_files" in run_preflight({**complete, "caption_files": files[1:2]})["checked"]


# ---------------------------------------------------------------- hub ids and the cache


def test_builtin_clip_with_tag_found_in_the_hub_cache(tmp_path):
    cache = hub_cache(tmp_path / "hf", VIT_REPO, ["open_clip_model.safetensors"])
    assert check_open_clip("clip.model", "ViT-B-16", "laion2b_s34b_b88k", str(cache)) == []


def test_builtin_clip_not_cached_while_offline(tmp_path):
    (problem,) = check_open_clip("clip.model", "ViT-B-16", "laion2b_s34b_b88k", str(tmp_path / "empty"))
    assert problem.key == "clip.model" and "HF_HUB_OFFLINE" in problem.what and VIT_REPO in problem.what
    assert problem.how.startswith(f"`hf download {VIT_REPO} --cache-dir {tmp_path / 'empty'}`")


def test_builtin_clip_not_cached_and_the_hub_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    (problem,) = check_open_clip("clip.model", "ViT-B-16", "laion2b_s34b_b88k", str(tmp_path / "empty"),
                                 endpoint=closed_port_endpoint())
    assert "could not be reached" in problem.what


def test_unknown_pretrained_tag_and_architecture():
    (problem,) = check_open_clip("clip.model", "ViT-B-16", "laion9b_nonsense", None)
    assert "not a pretrained tag" in problem.what or "neither a pretrained tag" in problem.what
    assert "laion2b_s34b_b88k" in problem.how
    (problem,) = check_open_clip("clip.model", "ViT-Q-99", "x", None)
    assert "not an open_clip architecture" in problem.what


def test_hf_hub_clip_needs_config_and_weights(tmp_path):
    repo = "timm/vit_large_patch14_clip_224.openai"
    cache = hub_cache(tmp_path / "hf", repo, ["open_clip_config.json"])
    (problem,) = check_open_clip("pool.knn_model", f"hf-hub:{repo}", None, str(cache))
    assert "open_clip_model.safetensors" in problem.what
    hub_cache(cache, repo, ["open_clip_pytorch_model.bin"])  # either weights file will do
    assert check_open_clip("pool.knn_model", f"hf-hub:{repo}", None, str(cache)) == []


def test_generator_hub_id_in_the_cache(tmp_path):
    cache = hub_cache(tmp_path / "hf", SD_REPO, SD_FILES)
    assert check_diffusers("generator.model", SD_REPO, str(cache)) == []
    partial = hub_cache(tmp_path / "hf2", SD_REPO, SD_FILES[:2])
    (problem,) = check_diffusers("generator.model", SD_REPO, str(partial))
    assert "vae/diffusion_pytorch_model.safetensors" in problem.what


def test_generator_dir_lacking_a_component(tmp_path):
    root = generator_dir(tmp_path / "sd")
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (problem,) = check_diffusers("generator.model", str(root), None)
    assert "unet/diffusion_pytorch_model.safetensors" in problem.what


# ---------------------------------------------------------------- the rule


def test_preflight_rule_fails_once_with_the_list(tmp_path):
    """A real Snakemake run: local paths exist (the parse-time check passes) but their contents do not."""
    for d in ("datasets", "pool/metadata", "index"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "pool" / "metadata" / "part-00000.parquet").write_bytes(b"not parquet")
    overlay = {"world": None, "tasks": ["dtd"], "sources": ["synthetic", "retrieved"], "pool": {"metadata": "pool/metadata/*.parquet", "knn_index": "index",
                                                         "serve": None, "knn_model": None},
               "clip": {"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "cache_dir": "hf"},
               "generator": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "cache_dir": "hf"},
               "task_settings": {"dtd": {"dataset": {"format": "dtd", "root": "datasets"}, "templates": ["a {c}."]}}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(tmp_path / "overlay.yaml"), "--cores", "1",
                           "results/tasks/dtd/task.json"],
                          capture_output=True, text=True, timeout=600, env={**_env(), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "ERROR in rule preflight: PreflightError: preflight: 5 thing(s)" in out, out[-3000:]
    for key in ("clip.model", "generator.model", "task_settings.dtd.dataset.root", "pool.metadata",
                "pool.knn_index"):
        assert f"config key '{key}'" in (tmp_path / "logs" / "preflight.log").read_text()
    assert "Traceback" not in out
    assert not (tmp_path / "results" / "tasks").exists()  # nothing after it ran


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}


def test_knn_service_that_does_not_answer(complete, tmp_path):
    """With pool.knn_service set, the service replaces the index folder; a dead URL is reported, not the folder."""
    service = {"url": closed_port_endpoint(), "indice_name": None}
    spec = {**complete, "pool": {**complete["pool"], "knn_index": None, "knn_service": service}}
    (problem,) = preflight_problems(spec)
    assert problem.key == "pool.knn_service.url" and "no kNN service answers" in problem.what
    assert "clip-retrieval back" in problem.how


def test_captioning_llm_in_the_cache_or_a_folder(tmp_path):
    repo = "meta-llama/Llama-2-7b-hf"
    cache = hub_cache(tmp_path / "hf", repo, ["config.json", "model.safetensors.index.json"])  # sharded weights
    assert check_causal_lm("prompts.llm.model", repo, str(cache)) == []
    (problem,) = check_causal_lm("prompts.llm.model", repo, str(tmp_path / "empty"))
    assert problem.key == "prompts.llm.model" and "HF_HUB_OFFLINE" in problem.what
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (problem,) = check_causal_lm("prompts.llm.model", str(folder), None)
    assert "lacks config.json or weights" in problem.what
    (folder / "model.safetensors").write_bytes(b"")
    assert check_causal_lm("prompts.llm.model", str(folder), None) == []


def test_llm_is_part_of_the_spec_only_when_configured(tmp_path):
    import copy

    from synret.config import deep_merge
    from synret.preflight import preflight_spec

    config = deep_merge(yaml.safe_load((ROOT / "config.yaml").read_text()),
                        yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text()))
    llm = (config["prompts"].get("llm") or {}).get("model")
    assert [m["model"] for m in preflight_spec(config)["llms"]] == ([llm] if llm else [])
    without = copy.deepcopy(config)
    without["prompts"]["llm"] = None
    for task in without["task_settings"].values():
        task.get("prompts", {}).pop("llm", None)
    assert preflight_spec(without)["llms"] == []


def test_isc_weights_are_checked_where_curation_uses_them(tmp_path):
    """The file is loaded and its keys compared with the network's (tests/test_copydetect.py passes a
    good one); a missing or broken file is one problem saying where to download it."""
    from synret.config import deep_merge
    from synret.preflight import check_copydetect, preflight_spec

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert "copydetect" not in preflight_spec(config)  # pixels: nothing to check, the spec unchanged
    weights = str(tmp_path / "isc_ft_v107.pth.tar")
    isc = deep_merge(config, {"curate": {"dedup": {"descriptor": "isc", "weights": weights}}})
    assert preflight_spec(isc)["copydetect"] == [{"key": "curate.dedup.weights", "path": weights}]
    (problem,) = check_copydetect("curate.dedup.weights", weights)
    assert problem.key == "curate.dedup.weights" and "does not exist" in problem.what
    assert "releases/download/v1.0.1/isc_ft_v107.pth.tar" in problem.how
    Path(weights).write_bytes(b"<html>Not Found</html>")  # what a failed download leaves
    (problem,) = check_copydetect("curate.dedup.weights", weights)
    assert "not a readable torch checkpoint" in problem.what


def test_preflight_passes_and_a_rerun_of_it_reruns_nothing_else(tmp_path, tiny_clip_dir):
    """The marker is an ancient input of the task rule: a config edit that reruns only the preflight
    (here clip.cache_dir, which no task job depends on) leaves the finished task alone. And a benchmark
    added beside another in the shared torchvision root does not rerun the first one's task."""
    make_dtd(tmp_path / "datasets")
    pool_folder(tmp_path / "pool")
    overlay = {"world": None, "tasks": ["dtd"], "sources": ["retrieved"],
               "clip": {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None},
               "pool": {"metadata": "pool/metadata/*.parquet", "knn_index": None, "serve": None, "knn_model": None},
               "retrieval": {"knn": {"enabled": False}},
               "task_settings": {"dtd": {"dataset": {"format": "dtd", "root": "datasets"}, "templates": ["a {c}."]}}}

    def run(*args, **change):
        (tmp_path / "overlay.yaml").write_text(yaml.safe_dump({**overlay, **change}))
        return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                               str(tmp_path), "--configfile", str(tmp_path / "overlay.yaml"), "--cores", "1",
                               "results/tasks/dtd/task.json", *args],
                              capture_output=True, text=True, timeout=600, env=_env())

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((tmp_path / "results" / "preflight.json").read_text())["checked"] == [
        "clip", "pool", "dataset:dtd"]
    assert "Nothing to be done" in run("-n").stdout
    make_flowers(tmp_path / "datasets")  # a new folder in the root DTD shares
    assert "Nothing to be done" in run("-n").stdout
    edited = run("-n", clip={**overlay["clip"], "cache_dir": str(tmp_path / "hf")})
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert "rule preflight:" in edited.stdout and "rule task:" not in edited.stdout
