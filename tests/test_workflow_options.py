"""The paper-path options through the real Snakemake CLI, on a tiny task without the demo world:
LLM captions (prompts.llm, a tiny random Llama saved here) and the linear-probe evaluation
(evaluate.linear_probe) of a zero-shot cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle"]


@pytest.mark.slow
def test_llm_captions_and_linear_probe_through_the_workflow(tiny_clip_dir, shape_images, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_captions import _tokenizer

    images, labels = shape_images
    for split in ("train", "val", "test"):
        for c in range(3):
            for i in np.flatnonzero(labels == c)[:4]:
                path = tmp_path / "dataset" / split / SHAPES[c] / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i]).save(path)
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"SAMPLE_ID": ["1"], "URL": ["http://127.0.0.1:1/1.png"], "TEXT": ["a circle"],
                             "NSFW": ["UNLIKELY"]}), tmp_path / "pool" / "part-00000.parquet")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 bos_token_id=1, eos_token_id=2)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    (tmp_path / "ref").mkdir()  # caption files in the reference's format; "triangle" has no backgrounds entry
    (tmp_path / "ref" / "bg.json").write_text(json.dumps({"circle": ["Desk", "Shelf"], "square": ["Wall"]}))
    (tmp_path / "ref" / "examples.json").write_text(json.dumps({"class": [["ring", "a ring on a hand"]]}))
    overlay = {
        "world": None, "tasks": ["t"], "sources": ["retrieved"], "scales": [6], "seeds": [0],
        "clip": {"model": f"local-dir:{tiny_clip_dir}"},
        "pool": {"metadata": str(tmp_path / "pool" / "*.parquet"), "knn_index": None, "serve": None},
        "task_settings": {"t": {"dataset": {"format": "imagefolder", "root": str(tmp_path / "dataset")},
                                "templates": ["a photo of a {c}.", "a {c} shape."]}},
        "retrieval": {"knn": {"enabled": False}},
        "prompts": {"images": 12, "llm": {"model": str(tmp_path / "lm"), "max_new_tokens": 8, "batch_size": 12,
                                          "backgrounds_file": {"path": str(tmp_path / "ref" / "bg.json")},
                                          "examples_file": str(tmp_path / "ref" / "examples.json"),
                                          "min_naming_share": 1.0}},
        "evaluate": {"splits": ["test"], "linear_probe": {"epochs": 5, "batch_size": 8, "warmup_steps": 2}},
    }
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    targets = ["results/prompts/t/generator.parquet", "results/cells/t/zeroshot/metrics.json"]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(REPO / "config.yaml"), str(tmp_path / "overlay.yaml"), "--cores", "1",
                           *targets], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "rule generator_prompts_llm:" in proc.stdout + proc.stderr  # the GPU-sized job, not the table step

    prompts = pq.read_table(tmp_path / targets[0]).to_pylist()
    assert len(prompts) == 12 and [r["label"] for r in prompts[:3]] == [0, 1, 2]
    assert {r["prompt_source"] for r in prompts} <= {"llm", "template"}
    assert sum(r["prompt_source"] == "llm" for r in prompts) >= 9
    assert {r["prompt_type"] for r in prompts} <= {"class", "background", "relation"}
    # the prompt stats: in the table's metadata and the job's log, with the naming share and its warning
    stats = json.loads(pq.read_schema(tmp_path / targets[0]).metadata[b"synret.prompt_stats"])
    assert stats["classes_without_backgrounds"] == 1 and stats["builtin_example_types"] == ["background", "relation"]
    assert 0 <= stats["names_class"] < 1  # a random LM seldom names the class
    log = (tmp_path / "logs" / "prompts" / "t.generator.log").read_text()
    assert "LLM captions name their class" in log and "WARNING: only" in log and "min_naming_share = 1.0" in log
    assert f'"names_class": {stats["names_class"]}' in log and "have no entry" in log and "triangle" in log
    # editing a caption file reruns the task's prompts
    (tmp_path / "ref" / "bg.json").write_text(json.dumps({"circle": ["Desk"], "square": ["Wall"]}))
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(REPO / "config.yaml"), str(tmp_path / "overlay.yaml"),
                          "--cores", "1", "-n", targets[0]], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "rule generator_prompts_llm:" in dry.stdout, dry.stdout[-3000:] + dry.stderr[-2000:]
    assert "bg.json" in dry.stdout

    metrics = json.loads((tmp_path / targets[1]).read_text())
    probe = metrics["evaluation"]["linear_probe"]["test"]
    assert probe["n"] == 12 and 0 <= metrics["lp_top1"] <= 1 and metrics["lp_top1"] == probe["top1"]
    assert "linear probe: 15 steps on 24 images" in (tmp_path / "logs" / "cells" / "t" / "zeroshot.log").read_text()
