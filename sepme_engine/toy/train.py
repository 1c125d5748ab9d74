"""Train the toy base: a tiny Stable Diffusion (UNet2DConditionModel + AutoencoderKL + CLIPTextModel
+ a small CLIP-BPE tokenizer + DDIM) on the toy world, from scratch, on CPU.

    python -m sepme_engine.toy.train --out DIR [--minutes M] [--steps N] [--seed S] [--fp16]

Data is rendered on the fly (sepme_engine.toy.world). Two phases:

1. the VAE: one block, no downsampling (32×32×4 latents), trained as a plain autoencoder for
   `vae_steps`; then its latents are whitened *inside* the model — the 1×1 quant_conv is folded
   with the mean and ZCA whitening of the latents and post_quant_conv with the inverse, so
   latents come out centred with unit covariance and scaling_factor is 1.0; the log-variance is
   fixed at -20 so `latent_dist.sample()` ≈ `latent_dist.mean`;
2. the UNet and the text encoder, jointly: v-prediction with min-SNR-γ loss weighting, AdamW,
   warm-up then cosine decay (over steps, or over wall-clock time with --minutes), an EMA of the
   weights (what is saved). Captions drop parts at random and are empty 10 % of the time.

The output is a normal diffusers pipeline folder (checkpointed every `checkpoint_minutes`), with
the config in `toy_train_config.json`. Progress goes to stderr.

The shipped weights (sepme_engine/toy/weights) came from two runs, 84 min in all on 2 CPU cores:

    python -m sepme_engine.toy.train --out /tmp/toy1 --minutes 62 --checkpoint-minutes 6
    python -m sepme_engine.toy.train --out /tmp/toy2 --resume /tmp/toy1 --seed 7 --lr 2e-4 \
        --warmup 20 --minutes 18 --shape-weights 1,1,1,2 --fp16

(the second one because the first drew "cross" as a triangle a quarter of the time; a time
budget makes the step count depend on the machine's speed, use --steps for an exact replay).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepme_engine.toy.tokenizer import MAX_LENGTH, toy_tokenizer, toy_vocab_and_merges
from sepme_engine.toy.world import render, sample_batch

CONFIG_NAME = "toy_train_config.json"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int | None = None  # stop after this many UNet steps ...
    minutes: float | None = None  # ... or after this much wall-clock time (UNet phase)
    batch: int = 32
    lr: float = 8e-4
    warmup: int = 100
    final_lr_frac: float = 0.1
    weight_decay: float = 0.01
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = MAX_LENGTH
    vae_channels: int = 32
    vae_steps: int = 200
    vae_batch: int = 16
    vae_lr: float = 1e-3
    prediction_type: str = "v_prediction"
    min_snr_gamma: float = 5.0
    p_empty: float = 0.1
    threads: int = 2
    checkpoint_minutes: float = 5.0
    fp16: bool = False
    resume: str | None = None  # continue from this pipeline folder (skips the VAE phase)
    shape_weights: tuple[float, ...] | None = None  # sampling weights of SHAPES (None: uniform)
    extra: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_components(cfg: TrainConfig) -> dict[str, Any]:
    """Freshly initialised (seeded) pipeline components."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = toy_tokenizer(cfg.max_length)
    vocab, _ = toy_vocab_and_merges()
    torch.manual_seed(cfg.seed)
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=cfg.unet_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=16,
    )
    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(cfg.vae_channels,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.0,
        mid_block_add_attention=False,
        force_upcast=False,
    )
    torch.manual_seed(cfg.seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=cfg.text_width,
            intermediate_size=cfg.text_width * 4,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            hidden_act="quick_gelu",
            projection_dim=cfg.text_width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
        prediction_type=cfg.prediction_type,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0


def train_vae(vae: Any, cfg: TrainConfig, rng: np.random.Generator) -> float:
    """Train the no-downsampling VAE as an autoencoder on the latent mean; returns the last loss."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    avg = 0.0
    for step in range(cfg.vae_steps):
        images, _, _ = sample_batch(rng, cfg.vae_batch, 0.0)
        x = _to_tensor(images)
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / cfg.vae_steps))
        avg = loss.item() if step == 0 else 0.95 * avg + 0.05 * loss.item()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            _log(f"vae step {step + 1}/{cfg.vae_steps} loss {avg:.5f}")
    vae.eval()
    return avg


@torch.no_grad()
def vae_judge_accuracy(vae: Any, rng: np.random.Generator, n: int = 64) -> dict[str, float]:
    """Judge accuracy of VAE reconstructions of `n` rendered images (a ceiling for the model)."""
    from sepme_engine.toy.judge import judge

    images, _, scenes = sample_batch(rng, n, 0.0)
    rec = vae.decode(vae.encode(_to_tensor(images)).latent_dist.mean).sample
    rec_np = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    acc = {"colour": 0.0, "shape": 0.0, "style": 0.0}
    for img, s in zip(rec_np, scenes, strict=True):
        v = judge(img)
        for axis in acc:
            acc[axis] += (v.get(axis) == getattr(s, axis)) / n
    acc["mse"] = float(((rec_np - images) ** 2).mean())
    return acc


@torch.no_grad()
def whiten_vae(vae: Any, rng: np.random.Generator, n: int = 512) -> dict[str, Any]:
    """Fold the latents' mean and ZCA whitening into quant_conv / post_quant_conv (exact)."""
    zs = []
    for _ in range(n // 64):
        images, _, _ = sample_batch(rng, 64, 0.0)
        zs.append(vae.encode(_to_tensor(images)).latent_dist.mean)
    z = torch.cat(zs).permute(0, 2, 3, 1).reshape(-1, 4).double()
    mean = z.mean(0)
    cov = torch.cov((z - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(1e-8)
    a = evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # ZCA
    a_inv = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    q, p = vae.quant_conv, vae.post_quant_conv
    wq = q.weight.double()[:, :, 0, 0]  # (8, 4)
    bq = q.bias.double()
    new_wq = torch.zeros_like(wq)
    new_bq = torch.full_like(bq, -20.0)  # log-variance rows: sample ≈ mean
    new_wq[:4] = a @ wq[:4]
    new_bq[:4] = a @ (bq[:4] - mean)
    q.weight.copy_(new_wq[:, :, None, None].to(q.weight.dtype))
    q.bias.copy_(new_bq.to(q.bias.dtype))
    wp = p.weight.double()[:, :, 0, 0]
    bp = p.bias.double()
    p.bias.copy_((bp + wp @ mean).to(p.bias.dtype))
    p.weight.copy_((wp @ a_inv)[:, :, None, None].to(p.weight.dtype))
    return {"latent_mean": mean.tolist(), "latent_eigenvalues": evals.tolist()}


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0]


def _lr_factor(cfg: TrainConfig, step: int, frac: float) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    frac = min(max(frac, 0.0), 1.0)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac))


def save_pipeline(
    components: dict[str, Any], out: Path, cfg: TrainConfig, info: dict[str, Any]
) -> None:
    """Write a diffusers pipeline folder atomically-ish (temp folder, then swap)."""
    from diffusers import StableDiffusionPipeline

    comps = dict(components)
    if cfg.fp16:
        comps = {
            k: (copy.deepcopy(v).to(torch.float16) if isinstance(v, torch.nn.Module) else v)
            for k, v in comps.items()
        }
    pipe = StableDiffusionPipeline(
        **comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    out = Path(out)
    tmp = out.with_name(out.name + ".incomplete")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # also the slow-tokenizer files (vocab.json / merges.txt), as a CLIP tokenizer folder has them
    vocab, merges = toy_vocab_and_merges()
    (tmp / "tokenizer" / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False), encoding="utf-8"
    )
    (tmp / "tokenizer" / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    payload = {"config": asdict(cfg), **info}
    (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _load_resume(path: Path, comps: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Load UNet, VAE and text encoder (float32) from a pipeline folder written by this script."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True).float()
    vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True).float().eval()
    text = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True).float()
    comps.update(unet=unet, vae=vae, text_encoder=text)
    prev = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    _log(f"resumed from {path} ({prev.get('steps')} steps)")
    return unet, vae, text, prev


def train(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """Train and save the toy pipeline at `out`; returns a summary dict."""
    from diffusers import DDPMScheduler

    if cfg.steps is None and cfg.minutes is None:
        cfg = replace(cfg, minutes=60.0)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    _log("config: " + json.dumps(asdict(cfg)))
    comps = build_components(cfg)
    unet, vae, text_encoder, tokenizer = (
        comps["unet"],
        comps["vae"],
        comps["text_encoder"],
        comps["tokenizer"],
    )
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    _log(f"params: unet {n_unet:,}  text_encoder {n_text:,}  vae {n_vae:,}")

    t0 = time.time()
    prev: dict[str, Any] = {}
    if cfg.resume:
        unet, vae, text_encoder, prev = _load_resume(Path(cfg.resume), comps)
        vae_loss, stats = float(prev.get("vae_loss", float("nan"))), {}
    else:
        vae_loss = train_vae(vae, cfg, rng)
        stats = whiten_vae(vae, rng)
    vae.requires_grad_(False)
    vae_seconds = time.time() - t0 + float(prev.get("vae_seconds", 0.0))
    stats["vae_judge"] = vae_judge_accuracy(vae, rng)
    _log(f"vae done in {vae_seconds:.0f}s, loss {vae_loss:.5f}, latent stats {stats}")

    noise_sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=cfg.prediction_type,
    )
    alphas = noise_sched.alphas_cumprod
    snr_all = alphas / (1 - alphas)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    unet.train()
    text_encoder.train()

    info: dict[str, Any] = {
        "params": {"unet": n_unet, "text_encoder": n_text, "vae": n_vae},
        "vae_loss": vae_loss,
        "vae_seconds": vae_seconds,
        **stats,
    }
    base_steps = int(prev.get("steps", 0))
    base_secs = float(prev.get("train_seconds", 0.0))
    if prev:
        info["resumed_from_steps"] = base_steps
    t_start = time.time()
    last_ckpt = t_start
    step = 0
    avg = 0.0
    budget = None if cfg.minutes is None else cfg.minutes * 60.0

    def out_components() -> dict[str, Any]:
        return {**comps, "unet": ema_unet.eval(), "text_encoder": ema_text.eval(), "vae": vae}

    while True:
        elapsed = time.time() - t_start
        if cfg.steps is not None and step >= cfg.steps:
            break
        if budget is not None and elapsed >= budget:
            break
        frac = step / cfg.steps if cfg.steps is not None else elapsed / float(budget or 1.0)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(cfg, step, frac)

        images, captions, _ = sample_batch(rng, cfg.batch, cfg.p_empty, cfg.shape_weights)
        with torch.no_grad():
            x0 = vae.encode(_to_tensor(images)).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (cfg.batch,))
        xt = noise_sched.add_noise(x0, noise, t)
        if cfg.prediction_type == "v_prediction":
            target = noise_sched.get_velocity(x0, noise, t)
        else:
            target = noise
        cond = encode_prompts(tokenizer, text_encoder, captions)
        pred = unet(xt, t, cond).sample
        snr = snr_all[t]
        if cfg.min_snr_gamma > 0:
            w = torch.minimum(snr, torch.full_like(snr, cfg.min_snr_gamma))
            w = w / (snr + 1) if cfg.prediction_type == "v_prediction" else w / snr
        else:
            w = torch.ones_like(snr)
        loss = (w * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if not math.isfinite(loss.item()):
            from sepme_engine.errors import TrainingDiverged

            raise TrainingDiverged(
                f"toy training diverged at step {step}", hint="lower --lr or change --seed"
            )
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for m_ema, m in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, p in zip(m_ema.parameters(), m.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
        step += 1
        avg = loss.item() if step == 1 else 0.98 * avg + 0.02 * loss.item()
        now = time.time()
        if step % 25 == 0 or step == 1:
            rate = (now - t_start) / step
            if budget is not None:
                eta = max(budget - (now - t_start), 0.0)
            else:
                eta = rate * ((cfg.steps or step) - step)
            _log(
                f"step {step} loss {avg:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{rate:.2f}s/step elapsed {(now - t_start) / 60:.1f}m eta {eta / 60:.1f}m"
            )
        if now - last_ckpt >= cfg.checkpoint_minutes * 60:
            info.update(steps=base_steps + step, train_seconds=base_secs + now - t_start, loss=avg)
            save_pipeline(out_components(), out, cfg, info)
            _log(f"checkpoint at step {step} -> {out}")
            last_ckpt = now

    total = time.time() - t_start
    info.update(
        steps=base_steps + step,
        train_seconds=base_secs + total,
        loss=avg,
        seconds_per_step=total / max(step, 1),
    )
    save_pipeline(out_components(), out, cfg, info)
    _log(f"done: {step} steps in {total / 60:.1f} min -> {out}")
    return info


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path]:
    ap = argparse.ArgumentParser(
        prog="python -m sepme_engine.toy.train", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, required=True, help="output pipeline folder")
    ap.add_argument("--minutes", type=float, default=None, help="UNet training wall-clock budget")
    ap.add_argument("--steps", type=int, default=None, help="UNet training steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    ap.add_argument(
        "--unet-channels", type=str, default=",".join(map(str, TrainConfig.unet_channels))
    )
    ap.add_argument(
        "--prediction-type",
        choices=["v_prediction", "epsilon"],
        default=TrainConfig.prediction_type,
    )
    ap.add_argument("--min-snr-gamma", type=float, default=TrainConfig.min_snr_gamma)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--checkpoint-minutes", type=float, default=TrainConfig.checkpoint_minutes)
    ap.add_argument("--fp16", action="store_true", help="save the weights in float16")
    ap.add_argument("--resume", type=str, default=None, help="continue from a pipeline folder")
    ap.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    ap.add_argument(
        "--shape-weights",
        type=str,
        default=None,
        help="sampling weights of circle,square,triangle,cross (e.g. 1,1,1,2); default uniform",
    )
    a = ap.parse_args(argv)
    cfg = TrainConfig(
        seed=a.seed,
        steps=a.steps,
        minutes=a.minutes,
        batch=a.batch,
        lr=a.lr,
        vae_steps=a.vae_steps,
        unet_channels=tuple(int(c) for c in a.unet_channels.split(",")),
        prediction_type=a.prediction_type,
        min_snr_gamma=a.min_snr_gamma,
        threads=a.threads,
        checkpoint_minutes=a.checkpoint_minutes,
        fp16=a.fp16,
        resume=a.resume,
        warmup=a.warmup,
        shape_weights=(
            tuple(float(w) for w in a.shape_weights.split(",")) if a.shape_weights else None
        ),
    )
    return cfg, a.out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    train(cfg, out)


if __name__ == "__main__":
    main()

__all__ = ["TrainConfig", "build_components", "main", "render", "save_pipeline", "train"]
