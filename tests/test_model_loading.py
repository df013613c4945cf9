"""Model loading by hub id from a cache directory, and the dtype rules, on real (tiny) open_clip and diffusers models.

The hub cache is laid out as huggingface_hub writes it (models--org--name/refs/main, snapshots/<commit>/...),
holding real weights; the loads run in a child process with HF_HUB_OFFLINE=1 (huggingface_hub reads it at
import), so they prove the `cache_dir` path works on a node without internet, as the paper config expects.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synret.synthesize import torch_dtype
from synret.world.generator import GeneratorConfig, train_generator

COMMIT = "f" * 40


def into_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Copy a model folder into the hub cache layout as the snapshot of ``main``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT, dirs_exist_ok=True)
    return cache


def offline(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter with HF_HUB_OFFLINE=1; it prints one JSON line last."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory, tiny_clip_dir, shape_images) -> Path:
    images, labels = shape_images
    out = tmp_path_factory.mktemp("pipe")
    cfg = GeneratorConfig(vae_steps=1, unet_steps=1, unet_block_out_channels=(16, 32, 32), unet_norm_num_groups=8)
    train_generator(images[:8], [f"a shape {y}" for y in labels[:8]], tiny_clip_dir, str(out), cfg, log=lambda m: None)
    return out


def test_dtype_rules():
    assert torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("auto", "cuda") == torch.float16  # the reference samples under fp16 autocast
    assert torch_dtype("bf16", "cuda") == torch.bfloat16 and torch_dtype("fp32", "cuda") == torch.float32


def test_clip_from_hub_cache_dir_offline(tmp_path, tiny_clip_dir):
    """An hf-hub: name, and the paper's exact call (ViT-B-16 + laion2b_s34b_b88k, resolved by open_clip to its
    hub repo), both read from cache_dir without network; the tag's weights as safetensors, which open_clip prefers."""
    import open_clip
    from safetensors.torch import save_file

    cache = into_hub_cache(tmp_path / "hf", "synret-test/tiny-clip", Path(tiny_clip_dir))
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    snapshot = tmp_path / "weights"
    snapshot.mkdir()
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
              str(snapshot / "open_clip_model.safetensors"))
    repo_id = open_clip.get_pretrained_cfg("ViT-B-16", "laion2b_s34b_b88k")["hf_hub"].rstrip("/")
    into_hub_cache(cache, repo_id, snapshot)
    result = offline(
        "import json, sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from synret.clip import load_clip\n"
        "a = load_clip('hf-hub:synret-test/tiny-clip', cache_dir=sys.argv[1])\n"
        "b = load_clip('local-dir:' + sys.argv[2])\n"
        "same = all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))\n"
        "vit = load_clip('ViT-B-16', 'laion2b_s34b_b88k', cache_dir=sys.argv[1])\n"
        "w = load_file(sys.argv[3])['visual.conv1.weight'].float()\n"
        "print(json.dumps({'same': same, 'dtype': str(a.model.visual.conv1.weight.dtype),\n"
        "                  'tokens': a.tokenizer(['a cat']).shape[1],\n"
        "                  'vit_same': bool(torch.equal(vit.model.visual.conv1.weight, w)), 'size': vit.image_size}))\n",
        str(cache), tiny_clip_dir, str(snapshot / "open_clip_model.safetensors"))
    # fp32 on CPU; the tiny model's own context length; the tag's weights are the cached file's
    assert result == {"same": True, "dtype": "torch.float32", "tokens": 20, "vit_same": True, "size": 224}


def test_pipeline_from_hub_cache_dir_offline(tmp_path, tiny_pipeline):
    assert (tiny_pipeline / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # saved as safetensors
    cache = into_hub_cache(tmp_path / "hf", "synret-test/tiny-sd", tiny_pipeline)
    result = offline(
        "import json, sys\n"
        "from synret.synthesize import load_pipeline\n"
        "auto = load_pipeline('synret-test/tiny-sd', 'ddim', device='cpu', cache_dir=sys.argv[1])\n"
        "bf16 = load_pipeline('synret-test/tiny-sd', 'ddim', dtype='bf16', device='cpu', cache_dir=sys.argv[1])\n"
        "out = bf16(prompt=['a circle'], num_inference_steps=2, guidance_scale=2.0, height=16, width=16,\n"
        "           output_type='np').images\n"
        "try:\n"
        "    load_pipeline('synret-test/absent', 'ddim', device='cpu', cache_dir=sys.argv[1])\n"
        "    absent = 'loaded'\n"
        "except OSError as e:\n"
        "    absent = 'named' if 'synret-test/absent' in str(e) else str(e)\n"
        "print(json.dumps({'auto': str(auto.unet.dtype), 'bf16': str(bf16.unet.dtype), 'absent': absent,\n"
        "                  'scheduler': type(auto.scheduler).__name__, 'shape': list(out.shape)}))\n",
        str(cache))
    assert result == {"auto": "torch.float32", "bf16": "torch.bfloat16", "scheduler": "DDIMScheduler",
                      "shape": [1, 16, 16, 3], "absent": "named"}
