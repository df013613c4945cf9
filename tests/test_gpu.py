"""The paper-scale code paths on a GPU, with the real architectures and random weights (nothing downloaded).

- Stable Diffusion 1.5: its UNet, VAE and CLIP ViT-L/14 text encoder built from SD 1.5's published
  configs, saved with ``save_pretrained`` and loaded back by the workflow's own ``load_pipeline``, then a
  shard of a few DDIM steps at 512 px with classifier-free guidance, saved at 256 px.
- OpenCLIP ``ViT-B-16`` (pretrained=None): the workflow's zero-shot head and a few finetuning steps under
  bf16 autocast (what ``precision: auto`` means on a GPU), at the paper's 224 px input.

Skipped without CUDA. Run with ``pytest -m gpu tests/test_gpu.py -s`` to see the timings.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    """An SD 1.5-architecture pipeline with random weights, saved as diffusers does (fp16 safetensors)."""
    from synret.architectures import save_sd15, sd15_pipeline

    pipe = sd15_pipeline()
    assert 859e6 < sum(p.numel() for p in pipe.unet.parameters()) < 860e6  # SD 1.5's 859.5M
    return save_sd15(tmp_path_factory.mktemp("sd15"), pipe=pipe)


def test_sd15_architecture_ddim_shard_at_512px(sd15_dir, tmp_path):
    import pyarrow.parquet as pq
    import webdataset as wds

    from synret.synthesize import generate_shard, load_pipeline

    pipe = load_pipeline(str(sd15_dir), "ddim", dtype="auto")  # the workflow's call: fp16 on the GPU
    assert pipe.device.type == "cuda" and pipe.unet.dtype == torch.float16
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    prompts = pa.table({"key": ["p000000", "p000001", "p000002", "p000003"], "label": [0, 1, 0, 1],
                        "classname": ["a", "b", "a", "b"], "prompt": ["a photo of a cat", "a photo of a dog"] * 2})
    cfg = {"batch_size": 2, "seed": 42, "steps": 3, "guidance_scale": 2.0, "height": 512, "width": 512,
           "save_size": 256, "image_format": "png"}
    torch.cuda.synchronize()
    start = time.time()
    stats = generate_shard(pipe, prompts, cfg, tmp_path / "shard.tar", tmp_path / "shard.parquet", log=print)
    torch.cuda.synchronize()
    print(f"SD1.5 architecture, 3 DDIM steps, 512 px, 4 images: {time.time() - start:.2f}s; "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    assert stats["images"] == 4
    assert pq.read_table(tmp_path / "shard.parquet").num_rows == 4
    for sample in wds.WebDataset(str(tmp_path / "shard.tar"), shardshuffle=False):
        image = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert image.shape == (256, 256, 3)
        assert image.std() > 0  # decoded, not a blank frame (random weights give noise, not NaN-black)


@pytest.mark.parametrize("setting", ["auto", "amp"])
def test_vit_b16_finetuning_steps_in_bf16(tmp_path, setting):
    """auto: bf16 autocast; amp: fp16 autocast with a gradient scaler. Both keep fp32 master weights."""
    from synret.cells import resolve_precision
    from synret.clip import load_clip
    from synret.finetune import FinetuneConfig, build_classifier, evaluate, train_classifier

    device = "cuda"
    precision = resolve_precision(setting, device)
    assert precision == {"auto": "amp_bf16", "amp": "amp"}[setting]
    clip = load_clip("ViT-B-16", None, device=device)  # the real architecture, random weights
    assert clip.image_size == 224 and 86e6 < sum(p.numel() for p in clip.model.visual.parameters()) < 87e6
    classes = [f"class {i}" for i in range(10)]
    model = build_classifier(clip, classes, ["a photo of a {c}.", "a {c}."], device)
    before = model.visual.conv1.weight.detach().clone()

    rng = np.random.default_rng(0)
    images = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    labels = [i % 10 for i in range(64)]
    cfg = FinetuneConfig(epochs=2, batch_size=32, lr=1e-5, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=500,
                         grad_clip=1.0, label_smoothing=0.0, num_workers=2, augment="open_clip", seed=42)
    torch.cuda.synchronize()
    stats = train_classifier(model, images, labels, clip.preprocess_train, cfg, device, precision, log=print)
    print(f"ViT-B-16 {precision} finetuning: {stats}; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    assert stats["steps"] == 4 and np.isfinite(stats["final_loss"])
    assert not torch.equal(before, model.visual.conv1.weight)  # trained
    assert model.visual.conv1.weight.dtype == torch.float32  # fp32 master weights under autocast

    paths = []
    for i, data in enumerate(images[:20]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        paths.append(str(path))
    result = evaluate(model, paths, labels[:20], 10, clip.preprocess_val, 16, device, precision)
    assert result["n"] == 20 and 0.0 <= result["top1"] <= 1.0


def test_cuda_out_of_memory_names_the_batch_size_key():
    """A real CUDA allocation beyond the device's memory: the job's message names the config key to lower."""
    from synret.exhaustion import explain

    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.OutOfMemoryError) as caught:
        torch.empty(2 * total, dtype=torch.uint8, device="cuda")
    message = explain(caught.value, "finetune", 20000, [])
    assert message.startswith("out of GPU memory (OutOfMemoryError") and "finetune.batch_size" in message
    assert "mem_mb" not in message  # host memory is not what ran out
