"""The GPU figures, on the paper's architectures with random weights, in one command (<= 10 minutes).

    python benchmarks/gpu.py            # on a GPU machine: pytest -m gpu, then every figure
    python benchmarks/gpu.py --check    # anywhere: the same code on toy sizes, to check the script itself

Writes ``benchmarks/results/gpu_<device>.json`` (``--out`` elsewhere) with the machine described:

- ``pytest -m gpu``: its outcome (the GPU tests: SD 1.5 shard, ViT-B/16 steps in bf16 and fp16);
- generation: SD 1.5 at 512 px with classifier-free guidance (scale 7.5), DDIM 50 and 25 steps, at
  the batch sizes given, through the workflow's own ``load_pipeline`` (fp16 on a GPU): images/s and the
  fraction of the FLOP bound (82.9 TFLOP an image at 50 steps, 42.7 at 25: UNet twice a step, VAE
  decode, text; ``../shared/notes/perf.md`` 1.1) at the device's dense bf16/fp16 peak;
- finetuning: OpenCLIP ViT-B/16's image tower and a linear head at 224 px, batch 512, AdamW, bf16
  autocast and fp32, on tensors already on the device (the compute, not the data loading): images/s
  and MFU, with the FLOPs counted by ``torch.utils.flop_counter`` on the same step;
- evaluation: the image tower's forward alone at batch 512, bf16 and fp32, images/s.

Targets (issue 11, on an H100/H200): >= 4.8 images/s at 50 steps (50% of the bound) and >= 3,800
images/s finetuning (50% MFU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

# dense bf16/fp16 tensor peaks, TFLOP/s, by a substring of the device name (datasheets)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05, "A10G": 70.0, "L4": 121.0}
GENERATION_TFLOP_PER_IMAGE = {50: 82.9, 25: 42.7}  # SD 1.5, 512 px, CFG (perf.md 1.1)
TARGETS = {"generation_images_per_second_50_steps": 4.8, "finetune_images_per_second_bf16": 3800.0}


def peak_tflops(name: str | None) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if name and k in name), None)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gpu_tests(timeout: int) -> dict:
    """``pytest -m gpu``: the GPU tests' outcome and time."""
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests/test_gpu.py"], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        return {"returncode": proc.returncode, "summary": last, "seconds": round(time.time() - start, 1)}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s", "seconds": timeout}


def generation(device: str, tiny: bool, steps_list: list[int], batches: list[int], repeats: int,
               peak: float | None) -> list[dict]:
    """Images/s of the workflow's pipeline (DDIM, CFG 7.5) per (steps, batch), after one warm-up batch."""
    import torch

    from synret.architectures import save_sd15
    from synret.synthesize import load_pipeline

    size = 32 if tiny else 512
    with tempfile.TemporaryDirectory() as folder:
        pipe = load_pipeline(str(save_sd15(Path(folder) / "sd15", tiny)), "ddim", dtype="auto", device=device)
    out = []
    for steps in steps_list:
        for batch in batches:
            prompts = [f"a photo of a thing number {i}" for i in range(batch)]

            def run():
                return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                            generator=torch.Generator(device=device).manual_seed(0), output_type="np")

            try:
                run()  # warm-up: kernels chosen, memory pooled
                sync(device)
                start = time.time()
                for _ in range(repeats):
                    run()
                sync(device)
            except torch.OutOfMemoryError:
                out.append({"steps": steps, "batch": batch, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            rate = batch * repeats / (time.time() - start)
            bound = peak / GENERATION_TFLOP_PER_IMAGE[steps] if peak and steps in GENERATION_TFLOP_PER_IMAGE else None
            out.append({"steps": steps, "batch": batch, "images_per_second": round(rate, 3),
                        "bound_images_per_second": None if bound is None or tiny else round(bound, 2),
                        "fraction_of_bound": None if bound is None or tiny else round(rate / bound, 3),
                        "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 1)
                                            if device.startswith("cuda") else None)})
            print("generation", out[-1], flush=True)
    del pipe
    return out


def _step_flops(model, head, x, y, precision: str) -> float:
    """FLOPs of one training step's forward and backward, counted on this very step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from synret.embed import autocast

    with FlopCounterMode(display=False) as counter:
        with autocast(x.device.type, precision):
            loss = torch.nn.functional.cross_entropy(head(model(x)), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def finetune_and_eval(device: str, tiny: bool, batch: int, steps: int, peak: float | None) -> dict:
    """Training and inference images/s of the image tower (+ linear head), bf16 autocast and fp32."""
    import torch

    from synret.architectures import vit_b16
    from synret.embed import autocast

    clip = vit_b16(tiny, device=device)
    visual = clip.model.visual.train()
    size = clip.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    head = torch.nn.Linear(clip.model.visual.output_dim, 1000).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.AdamW(list(visual.parameters()) + list(head.parameters()), lr=1e-5, weight_decay=0.1)
    out = {"image_size": size, "batch": batch}
    for precision in ("amp_bf16", "fp32"):
        label = "bf16" if precision == "amp_bf16" else "fp32"
        flops = _step_flops(visual, head, x[:8], y[:8], precision) * batch / 8

        def step():
            with autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(head(visual(x)), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        sync(device)
        start = time.time()
        for _ in range(steps):
            step()
        sync(device)
        rate = batch * steps / (time.time() - start)
        out[f"finetune_images_per_second_{label}"] = round(rate, 1)
        out[f"finetune_gflop_per_image_{label}"] = round(flops / batch / 1e9, 2)
        out[f"finetune_mfu_{label}"] = None if not peak or tiny else round(rate * flops / batch / (peak * 1e12), 3)
        visual.eval()
        with torch.no_grad():
            for _ in range(2):
                with autocast(device, precision):
                    visual(x)
            sync(device)
            start = time.time()
            for _ in range(steps):
                with autocast(device, precision):
                    visual(x)
            sync(device)
        out[f"eval_images_per_second_{label}"] = round(batch * steps / (time.time() - start), 1)
        visual.train()
        print("vit", {k: v for k, v in out.items() if label in k}, flush=True)
    if device.startswith("cuda"):
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="toy sizes on any device: checks the script itself")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gpu_<device>.json)")
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 16, 32], help="generation batch sizes")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu first")
    args = parser.parse_args()

    import torch

    from workflow_speed import machine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.check:
        sys.exit("no CUDA device: run on a GPU machine, or with --check to try the script on toy sizes")
    name = torch.cuda.get_device_name(0) if device == "cuda" else None
    peak = peak_tflops(name)
    start = time.time()
    result = {"benchmark": "gpu", "check": args.check, "device": name or "cpu", "peak_tflops_bf16_dense": peak,
              "machine": machine()}
    if not args.skip_tests and not args.check:
        result["pytest_gpu"] = gpu_tests(timeout=240)
        print("pytest -m gpu:", result["pytest_gpu"], flush=True)
    result["generation"] = generation(device, args.check, [2] if args.check else [50, 25],
                                      [2] if args.check else args.batches, 1, peak)
    result["vit_b16"] = finetune_and_eval(device, args.check, 8 if args.check else 512, 2 if args.check else 10, peak)
    best50 = max((g.get("images_per_second", 0) for g in result["generation"] if g["steps"] == 50), default=None)
    result["targets"] = TARGETS
    result["met"] = None if args.check else {
        "generation_images_per_second_50_steps": best50 is not None and best50 >= TARGETS[
            "generation_images_per_second_50_steps"],
        "finetune_images_per_second_bf16": result["vit_b16"]["finetune_images_per_second_bf16"] >= TARGETS[
            "finetune_images_per_second_bf16"],
    }
    result["seconds"] = round(time.time() - start, 1)
    tag = "check" if args.check else "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"gpu_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
