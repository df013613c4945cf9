"""The paper's models as architectures with random weights: nothing downloaded, the real shapes and FLOPs.

Stable Diffusion 1.5's component configs (``unet/config.json``, ``vae/config.json``,
``text_encoder/config.json``, ``scheduler/scheduler_config.json`` of the published pipeline) are
written out here, so that the GPU tests and ``benchmarks/gpu.py`` build the very network the paper
samples from (859.5M UNet parameters) without its weights. OpenCLIP's ``ViT-B-16`` comes from
open_clip itself with ``pretrained=None``. Tiny variants of both keep the same code paths cheap
enough for a CPU check.
"""

from __future__ import annotations

from pathlib import Path

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True,
)

# the same component types at toy sizes (a 32 px image, 8 px latents): for checks on a CPU
TINY_UNET = dict(
    SD15_UNET, sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64, attention_head_dim=4,
)
TINY_VAE = dict(SD15_VAE, sample_size=32, layers_per_block=1, block_out_channels=(16, 32, 32, 32), norm_num_groups=8)
TINY_TEXT = dict(SD15_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=64)
# open_clip model config of a toy ViT with ViT-B-16's structure
TINY_VIT = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def sd15_pipeline(tiny: bool = False, seed: int = 0):
    """A StableDiffusionPipeline of SD 1.5's architecture (or its toy variant) with random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .world.generator import build_tokenizer

    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT))),
        tokenizer=build_tokenizer(77), unet=UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET)),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def save_sd15(out: str | Path, tiny: bool = False, pipe=None) -> Path:
    """Save such a pipeline (``pipe``, else a new one) as the hub's copy is saved (fp16 safetensors), for
    the workflow's ``load_pipeline``."""
    import torch

    (pipe or sd15_pipeline(tiny)).to(torch.float16).save_pretrained(out, safe_serialization=True)
    return Path(out)


def vit_b16(tiny: bool = False, device: str = "cpu"):
    """OpenCLIP's ViT-B-16 (or a toy ViT), random weights, loaded by the workflow's ``load_clip``."""
    from .clip import load_clip

    if not tiny:
        return load_clip("ViT-B-16", None, device=device)
    import tempfile

    import open_clip
    import torch

    from .clip import save_clip_local_dir

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="tiny-vit-"))
    save_clip_local_dir(open_clip.CLIP(**TINY_VIT), TINY_VIT, folder,
                        {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]})
    return load_clip(f"local-dir:{folder}", None, device=device)
