"""A tiny Stable-Diffusion-style text-to-image generator for the offline demo world.

The demo world cannot download SD 1.5, so it trains a miniature of it on its own 32x32 images:
an ``AutoencoderKL`` (32 px image <-> 16x16x4 latent), a ``UNet2DConditionModel`` conditioned on
the token states of the demo world's tiny open_clip text tower (converted to a ``CLIPTextModel``),
and a ``CLIPTokenizer`` built offline from open_clip's bundled BPE file. The result is saved with
``save_pretrained`` and loads exactly like SD 1.5: ``StableDiffusionPipeline.from_pretrained(dir)``.

Everything is real diffusers/transformers classes; training is counted in steps (deterministic on
CPU for a fixed seed and thread count), never in wall-clock time.
"""

from __future__ import annotations

import copy
import gzip
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from synret.clip import load_clip

BOS_TOKEN = "<|startoftext|>"  # id 49406, as in SD 1.5's tokenizer
EOS_TOKEN = "<|endoftext|>"  # id 49407; also the pad token, as in SD 1.5's tokenizer
CLIP_VOCAB_SIZE = 49408

Log = Callable[[str], Any]


# ----------------------------------------------------------------------------- tokenizer


def clip_bpe_vocab_and_merges() -> tuple[list[str], list[str]]:
    """open_clip's vocabulary (in id order) and BPE merges, rebuilt from its bundled BPE file.

    Same construction as ``open_clip.tokenizer.SimpleTokenizer``: the 256 byte characters, the same
    with ``</w>``, one token per merge, then the two special tokens (ids 49406 and 49407).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # line 0 is the "#version" header
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    assert len(vocab) == CLIP_VOCAB_SIZE and len(set(vocab)) == CLIP_VOCAB_SIZE
    return vocab, merges


def build_tokenizer(context_length: int):
    """A Hugging Face ``CLIPTokenizer`` with open_clip's vocabulary (bos 49406, eos = pad 49407)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # transformers 5 takes the two paths positionally (``vocab``, ``merges``); the
        # ``vocab_file=`` keyword is only honoured by from_pretrained and is ignored here.
        tokenizer = CLIPTokenizer(
            str(vocab_file),
            str(merges_file),
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            model_max_length=context_length,
        )
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407 == tokenizer.pad_token_id
    return tokenizer


# ----------------------------------------------------------------------------- text encoder


def _text_tower(clip_model: torch.nn.Module) -> torch.nn.Module:
    """The module holding token_embedding/positional_embedding/transformer/ln_final."""
    tower = getattr(clip_model, "text", clip_model)  # CustomTextCLIP keeps its text tower in .text
    if not hasattr(tower, "token_embedding") or not hasattr(tower, "transformer"):
        raise TypeError("expected an open_clip CLIP with a built-in text transformer")
    return tower


def text_config_from_clip(clip_model: torch.nn.Module):
    """A ``CLIPTextConfig`` describing open_clip's text tower (shapes, activation, LayerNorm eps)."""
    from open_clip.transformer import QuickGELU
    from transformers import CLIPTextConfig

    tower = _text_tower(clip_model)
    block = tower.transformer.resblocks[0]
    if not isinstance(block.attn, torch.nn.MultiheadAttention) or not isinstance(block.ls_1, torch.nn.Identity):
        raise TypeError("only the default open_clip text block (no layer scale, no custom attention) converts")
    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        hidden_act = "quick_gelu"
    elif isinstance(act, torch.nn.GELU) and act.approximate == "none":
        hidden_act = "gelu"
    else:
        raise TypeError(f"unsupported text activation {act!r}")
    width = tower.token_embedding.embedding_dim
    return CLIPTextConfig(
        vocab_size=tower.token_embedding.num_embeddings,
        hidden_size=width,
        intermediate_size=block.mlp.c_fc.out_features,  # width * mlp_ratio
        projection_dim=width,  # unused by CLIPTextModel (no projection head)
        num_hidden_layers=len(tower.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,
        max_position_embeddings=tower.positional_embedding.shape[0],
        hidden_act=hidden_act,
        layer_norm_eps=float(tower.ln_final.eps),
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


@torch.no_grad()
def _copy_(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into ``dst`` after checking shapes."""
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch {tuple(dst.shape)} != {tuple(src.shape)}")
    dst.copy_(src.detach().to(dst.dtype))


def text_encoder_from_clip(clip_model: torch.nn.Module):
    """A ``CLIPTextModel`` whose ``last_hidden_state`` equals open_clip's ln_final(transformer(...))."""
    from transformers import CLIPTextModel

    tower = _text_tower(clip_model)
    model = CLIPTextModel(text_config_from_clip(clip_model)).eval()
    tm = getattr(model, "text_model", model)
    _copy_(tm.embeddings.token_embedding.weight, tower.token_embedding.weight)
    _copy_(tm.embeddings.position_embedding.weight, tower.positional_embedding)
    for src, dst in zip(tower.transformer.resblocks, tm.encoder.layers):
        q_w, k_w, v_w = src.attn.in_proj_weight.chunk(3, dim=0)
        q_b, k_b, v_b = src.attn.in_proj_bias.chunk(3, dim=0)
        attn = dst.self_attn
        pairs = [(attn.q_proj.weight, q_w), (attn.k_proj.weight, k_w), (attn.v_proj.weight, v_w),
                 (attn.q_proj.bias, q_b), (attn.k_proj.bias, k_b), (attn.v_proj.bias, v_b)]
        for d, s in ((attn.out_proj, src.attn.out_proj), (dst.layer_norm1, src.ln_1), (dst.layer_norm2, src.ln_2),
                     (dst.mlp.fc1, src.mlp.c_fc), (dst.mlp.fc2, src.mlp.c_proj)):
            pairs += [(d.weight, s.weight), (d.bias, s.bias)]
        for d_param, s_tensor in pairs:
            _copy_(d_param, s_tensor)
    _copy_(tm.final_layer_norm.weight, tower.ln_final.weight)
    _copy_(tm.final_layer_norm.bias, tower.ln_final.bias)
    return model


# ----------------------------------------------------------------------------- config


@dataclass
class GeneratorConfig:
    """Hyper-parameters of the tiny text-to-image generator (defaults suit the 32 px demo world).

    The generator works at 16 px: training images are average-pooled to the VAE's input size, and the
    synthetic stage saves samples at a larger size, as SD 1.5's 512 px samples are saved at 256 px.
    A one-block VAE does not downsample: with 4 latent channels for 3 colour channels it learns a
    near-lossless code in a few hundred steps, where a downsampling VAE stayed blurry and colour-shifted
    at any step count that fits the demo's time budget (measured on 2 CPU cores).
    """

    seed: int = 0  # seeds weight init, batches, noise, timesteps and caption dropout
    log_every: int = 50  # log a progress line every this many steps of each phase
    # --- VAE (diffusers AutoencoderKL)
    vae_block_out_channels: tuple[int, ...] = (32,)  # n blocks -> spatial factor 2**(n-1); one block: 16 px <-> 16x16x4
    vae_latent_channels: int = 4  # latent channels, as in SD
    vae_layers_per_block: int = 1  # resnet layers per encoder/decoder block
    vae_steps: int = 250  # optimisation steps (deterministic count; ~0.13 s each on 2 CPU threads)
    vae_batch_size: int = 32  # images per VAE step
    vae_lr: float = 3e-3  # AdamW learning rate of the VAE
    vae_kl_weight: float = 1e-4  # weight of the KL term (mean per latent element) next to the pixel MSE
    # GroupNorm groups of the VAE; None: one channel per group (up to 32), which normalises each channel's
    # mean away and with it the image's absolute colour (measured: 3x the colour error of 4 groups)
    vae_norm_num_groups: int | None = None
    # --- UNet (diffusers UNet2DConditionModel, the measured "u16b" config)
    unet_sample_size: int = 16  # latent side length (image size / VAE factor)
    unet_layers_per_block: int = 1  # resnet (+attention) layers per block
    unet_block_out_channels: tuple[int, ...] = (32, 64, 128)  # channels per resolution level
    unet_down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    unet_up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    unet_cross_attention_dim: int | None = None  # None -> the text encoder's width
    unet_attention_head_dim: int = 4  # diffusers' legacy name: this is the number of heads
    unet_norm_num_groups: int = 16  # GroupNorm groups (must divide every block width)
    unet_steps: int = 500  # optimisation steps (deterministic count; ~0.35 s each on 2 CPU threads)
    unet_batch_size: int = 32  # latents per UNet step
    unet_lr: float = 2e-3  # AdamW learning rate of the UNet
    unet_weight_decay: float = 1e-2  # AdamW weight decay of the UNet
    unet_grad_clip: float = 1.0  # max global grad norm of the UNet
    # --- diffusion
    prediction_type: str = "v_prediction"  # the UNet predicts v (Salimans & Ho), as SD 2
    beta_schedule: str = "squaredcos_cap_v2"  # cosine noise schedule
    num_train_timesteps: int = 1000  # diffusion steps of the training schedule
    sample_timestep_spacing: str = "trailing"  # DDIM spacing; trailing starts at t=999 (pure noise)
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting; None = plain MSE (no gain measured here)
    # training timesteps: None = uniform; a number m = logit-normal, t = T * sigmoid(N(m, 1)) (as SD 3 samples
    # them): m > 0 trains more on noisy steps, where a 16 px image's colour and shape are decided
    timestep_logit_mean: float | None = None
    caption_dropout: float = 0.1  # probability of training on "" (enables classifier-free guidance)
    ema_decay: float = 0.995  # EMA of UNet weights (saved); decay = min(ema_decay, (1+s)/(10+s))
    max_images: int | None = None  # train on a seeded random subset of this many images (None: all)
    # keep only the pool's best-matching (image, caption) pairs by the world CLIP's cosine similarity, the
    # top fraction, before drawing max_images: as SD's training data was LAION filtered by CLIP score and
    # then its best subsets (laion-aesthetics); None: every pair
    caption_filter_top: float | None = None
    # name -> UNet step: the pipeline as it was after that many steps is saved too (a less trained generator)
    snapshots: dict[str, int] | None = None


# ----------------------------------------------------------------------------- models


def build_vae(cfg: GeneratorConfig):
    """An untrained ``AutoencoderKL`` for 32 px RGB images."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_block_out_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.vae_latent_channels,
        norm_num_groups=cfg.vae_norm_num_groups or min(32, min(cfg.vae_block_out_channels)),
        sample_size=cfg.unet_sample_size * 2 ** (n - 1),
    )


def build_unet(cfg: GeneratorConfig, cross_attention_dim: int):
    """An untrained ``UNet2DConditionModel`` on the VAE's latents."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.unet_sample_size,
        in_channels=cfg.vae_latent_channels,
        out_channels=cfg.vae_latent_channels,
        layers_per_block=cfg.unet_layers_per_block,
        block_out_channels=tuple(cfg.unet_block_out_channels),
        down_block_types=tuple(cfg.unet_down_block_types),
        up_block_types=tuple(cfg.unet_up_block_types),
        cross_attention_dim=cfg.unet_cross_attention_dim or cross_attention_dim,
        attention_head_dim=cfg.unet_attention_head_dim,
        norm_num_groups=cfg.unet_norm_num_groups,
    )


def build_train_scheduler(cfg: GeneratorConfig):
    """The DDPM noise schedule used for training."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


def build_sample_scheduler(cfg: GeneratorConfig):
    """The DDIM sampler saved with the pipeline (same betas and prediction type as training)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        # "leading" + steps_offset never visits t=999, so sampling would start from pure noise at a
        # timestep the model was trained with little noise left (washed-out images); trailing starts at 999.
        timestep_spacing=cfg.sample_timestep_spacing,
    )


def n_params(model: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool uint8 (N, H, W, 3) images by an integer factor."""
    n, h, w, c = images.shape
    pooled = images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return np.rint(pooled).astype(np.uint8)


def _pixels(images_u8: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A float batch in [-1, 1], NCHW, from the uint8 NCHW tensor."""
    return images_u8[idx].float().div(127.5).sub(1.0)


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids exactly as ``StableDiffusionPipeline.encode_prompt`` makes them at sampling time."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# ----------------------------------------------------------------------------- VAE phase


def train_vae(vae, images_u8: torch.Tensor, cfg: GeneratorConfig, gen: torch.Generator, log: Log) -> dict:
    """Train the autoencoder: pixel MSE of a posterior sample's reconstruction + a small KL."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    losses, recs = [], []
    for step in range(cfg.vae_steps):
        x = _pixels(images_u8, torch.randint(len(images_u8), (cfg.vae_batch_size,), generator=gen))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        loss = rec + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        recs.append(rec.item())
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step:5d}/{cfg.vae_steps}  loss {loss.item():.4f}  rec {rec.item():.4f}  kl {kl.item():.2f}")
    vae.eval()
    return {"vae_loss_final": _tail_mean(losses), "vae_loss_mean": _mean(losses), "vae_rec_final": _tail_mean(recs)}


@torch.no_grad()
def encode_latents(vae, images_u8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of all images (unscaled latents)."""
    out = [vae.encode(_pixels(images_u8, torch.arange(i, min(i + batch_size, len(images_u8))))).latent_dist.mean
           for i in range(0, len(images_u8), batch_size)]
    return torch.cat(out)


# ----------------------------------------------------------------------------- UNet phase


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, with warm-up decay min(max_decay, (1+s)/(10+s))."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def sample_timesteps(cfg: GeneratorConfig, gen: torch.Generator) -> torch.Tensor:
    """A batch of training timesteps, uniform or logit-normal (``cfg.timestep_logit_mean``)."""
    if cfg.timestep_logit_mean is None:
        return torch.randint(cfg.num_train_timesteps, (cfg.unet_batch_size,), generator=gen)
    u = torch.sigmoid(torch.randn(cfg.unet_batch_size, generator=gen) + cfg.timestep_logit_mean)
    return (u * cfg.num_train_timesteps).long().clamp(0, cfg.num_train_timesteps - 1)


def train_unet(unet, text_encoder, latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
               cfg: GeneratorConfig, gen: torch.Generator, log: Log,
               snapshots: dict[str, torch.nn.Module] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the UNet to predict v on scaled latents; returns the EMA copy and stats. ``snapshots`` is
    filled with a copy of the EMA weights after each step that ``cfg.snapshots`` names."""
    scheduler = build_train_scheduler(cfg)
    # Min-SNR-gamma weighting (Hang et al. 2023): for v-prediction, min(snr, gamma) / (snr + 1)
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    snr_weight = torch.ones_like(snr) if cfg.min_snr_gamma is None else snr.clamp(max=cfg.min_snr_gamma) / (snr + 1)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=cfg.unet_weight_decay)
    unet.train()
    losses = []
    for step in range(cfg.unet_steps):
        # batch: latents, captions (dropped to "" with probability caption_dropout), noise, timesteps
        idx = torch.randint(len(latents), (cfg.unet_batch_size,), generator=gen)
        drop = torch.rand(cfg.unet_batch_size, generator=gen) < cfg.caption_dropout
        batch_ids = torch.where(drop[:, None], empty_ids[None, :], ids[idx])
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = sample_timesteps(cfg, gen)
        with torch.no_grad():
            cond = text_encoder(batch_ids).last_hidden_state
        # forward / backward
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred, scheduler.get_velocity(x0, noise, t), reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.unet_grad_clip)
        opt.step()
        ema_update(ema, unet, step, cfg.ema_decay)
        for name, at in (cfg.snapshots or {}).items():
            if step + 1 == at and snapshots is not None:
                snapshots[name] = copy.deepcopy(ema)
                log(f"snapshot {name!r} after {at} UNet steps")
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step:5d}/{cfg.unet_steps}  loss {loss.item():.4f}")
    unet.eval()
    return ema, {"unet_loss_final": _tail_mean(losses), "unet_loss_mean": _mean(losses)}


@torch.no_grad()
def caption_match(clip, images: np.ndarray, captions: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """Cosine similarity of each image to its caption under the CLIP (images at the CLIP's size)."""
    from synret.clip import encode_texts
    from synret.world.clip_train import images_to_tensor

    image_emb = torch.cat([F.normalize(clip.model.encode_image(images_to_tensor(images[i : i + batch_size])), dim=-1)
                           for i in range(0, len(images), batch_size)])
    text_emb = encode_texts(clip, list(captions), batch_size=batch_size)
    return (image_emb * text_emb).sum(dim=1).numpy()


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _tail_mean(xs: Sequence[float], n: int = 50) -> float:
    """Mean of the last ``n`` values: a less noisy "final" loss."""
    return _mean(xs[-n:])


# ----------------------------------------------------------------------------- end to end


def train_generator(
    images: np.ndarray,
    captions: Sequence[str],
    clip_dir: str,
    out_dir: str,
    cfg: GeneratorConfig,
    log: Log = print,
    snapshot_dirs: dict[str, str] | None = None,
) -> dict:
    """Train VAE and UNet on (images, captions) and save a ``StableDiffusionPipeline`` to ``out_dir``.

    ``images`` is uint8 (N, H, W, 3), ``captions`` has N strings, ``clip_dir`` is the tiny CLIP in
    open_clip's hub layout. Returns loss/size/timing stats.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(captions):
        raise ValueError("images must be uint8 (N, H, W, 3) with one caption per image")
    size = cfg.unet_sample_size * 2 ** (len(cfg.vae_block_out_channels) - 1)
    full_size = images
    if images.shape[1] == images.shape[2] and images.shape[1] % size == 0 and images.shape[1] > size:
        images = downsample(images, images.shape[1] // size)  # the generator works at a lower resolution
    if images.shape[1:3] != (size, size):
        raise ValueError(f"images must be {size}x{size} (or a multiple) for this config, got {images.shape[1:3]}")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    stats: dict[str, Any] = {"pool_images": len(images), "config": asdict(cfg)}
    clip = load_clip("local-dir:" + str(clip_dir))
    candidates = np.arange(len(images))
    if cfg.caption_filter_top is not None:  # the best-matching pairs, by the CLIP, at the pool's own size
        match = caption_match(clip, full_size, captions)
        cut = np.quantile(match, 1 - cfg.caption_filter_top)
        candidates = np.flatnonzero(match >= cut)
        stats.update(caption_match_cut=float(cut), caption_match_kept=len(candidates))
        log(f"caption filter: kept {len(candidates)} of {len(images)} pairs (CLIP similarity >= {cut:.3f})")
    if cfg.max_images is not None and len(candidates) > cfg.max_images:
        # encoding latents costs ~2.5 ms per image on a CPU: encode only the images training can use
        candidates = np.sort(np.random.default_rng(cfg.seed).choice(candidates, cfg.max_images, replace=False))
    images, captions = images[candidates], [captions[i] for i in candidates]
    stats["n_images"] = len(images)

    # text side: tokenizer + frozen text encoder from the CLIP
    tokenizer = build_tokenizer(clip.model.context_length)
    text_encoder = text_encoder_from_clip(clip.model).requires_grad_(False)
    del clip
    ids, empty_ids = tokenize(tokenizer, captions), tokenize(tokenizer, [""])[0]
    images_u8 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()

    # VAE: train, encode all images, scale latents to unit variance
    t0 = time.perf_counter()
    vae = build_vae(cfg)
    stats.update(train_vae(vae, images_u8, cfg, gen, log))
    latents = encode_latents(vae, images_u8)
    latent_std = latents.std().item()
    vae.register_to_config(scaling_factor=1.0 / latent_std)
    stats.update(latent_std=latent_std, scaling_factor=1.0 / latent_std, vae_seconds=time.perf_counter() - t0)
    log(f"vae done in {stats['vae_seconds']:.1f}s, latent std {latent_std:.4f}")

    # UNet: train on scaled latents, keep the EMA weights
    t0 = time.perf_counter()
    unet = build_unet(cfg, text_encoder.config.hidden_size)
    late = {name: at for name, at in (cfg.snapshots or {}).items() if at > cfg.unet_steps}
    if late:
        raise ValueError(f"config key 'world.generator.snapshots': steps {late} lie beyond unet_steps {cfg.unet_steps}")
    snapshots: dict[str, torch.nn.Module] = {}
    ema_unet, unet_stats = train_unet(unet, text_encoder, latents / latent_std, ids, empty_ids, cfg, gen, log,
                                      snapshots)
    stats.update(unet_stats, unet_seconds=time.perf_counter() - t0)
    log(f"unet done in {stats['unet_seconds']:.1f}s")

    # pipeline: assemble and save like SD 1.5
    t0 = time.perf_counter()
    pipe = build_pipeline(vae, text_encoder, tokenizer, ema_unet, cfg)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for name, snapshot_unet in snapshots.items():  # the same pipeline with the UNet as it was then
        build_pipeline(vae, text_encoder, tokenizer, snapshot_unet, cfg).save_pretrained(
            (snapshot_dirs or {}).get(name, f"{out_dir}_{name}"), safe_serialization=True)
    stats.update(
        save_seconds=time.perf_counter() - t0,
        total_seconds=time.perf_counter() - t_start,
        vae_params=n_params(vae),
        unet_params=n_params(ema_unet),
        text_encoder_params=n_params(text_encoder),
    )
    log(f"saved pipeline to {out_dir} ({stats['total_seconds']:.1f}s in all)")
    return stats


def build_pipeline(vae, text_encoder, tokenizer, unet, cfg: GeneratorConfig):
    """A ``StableDiffusionPipeline`` (no safety checker) with the DDIM sampler of ``cfg``."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sample_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
