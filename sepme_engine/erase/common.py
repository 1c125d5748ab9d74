"""What the erasure methods share: the result every `train` returns, the baselines' progress
record, the input checks, the training draw (x_0, t, noise -> x_t) of the trained methods, the
frozen-UNet context of a training run, and the provenance every increment records.

The draw (`NoisedDraw`, used by SepME, ESD-x, FMN and the verdict): from one CPU `torch.Generator`, per iteration,
`idx` (which training latents), `t ~ U{0..T-1}` of the model's training schedule, and standard
normal noise; `x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·noise` with ᾱ from a `DDPMScheduler` built from
the pipeline's scheduler config. So a run is reproducible and draws the same batches on any
device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.increment import Increment
from sepme_engine.errors import InvalidInput, TrainingDiverged

StopReason = Literal["cap", "closed-form", "interrupted", "threshold"]


@dataclass(frozen=True)
class MethodResult:
    """The outcome of one erasure of one concept: what every method's `train` returns."""

    increment: Increment  # dense ΔW (baselines) or factored C·S (SepME) per to_k / to_v
    iterations: int  # optimiser steps / loss evaluations (0 for closed-form methods)
    stop_reason: StopReason
    unet_passes_training: int  # UNet evaluations, counted per sample (batch entries)
    wall_s: float
    final_loss: float  # the method's loss at the last evaluation (see each module)
    loss_history: list[float] = field(repr=False)
    m_k: int | None = None  # SepME: null-space dimension; None for dense increments
    # what the method reports beyond the above (recorded in the increment's manifest stats)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodStep:
    """What a progress display shows after each iteration of a trained baseline. (`momentum`
    and `tau`: the stopping statistic and its threshold, for methods that stop on one; the
    baselines run to their step count.)"""

    method: str
    iteration: int  # from 0
    max_steps: int
    loss: float
    elapsed_s: float
    momentum: float | None = None
    tau: float | None = None


def provenance(method: str, config: Any, preserve: Sequence[str] | None = None) -> dict[str, str]:
    """The increment's provenance, one schema for every method (safetensors metadata; the
    manifest records the same `settings`): `sepme.method`, `sepme.settings` (the method's
    Config as JSON, plus the method's name) and, for methods that keep a preserve set,
    `sepme.preserve_prompts` (E_k with the blank prompt first). Increments written before this
    schema carry `sepme.config` / `sepme.preserve` as well; no reader depends on either, so
    they load as before."""
    meta = {
        "sepme.method": method,
        "sepme.settings": json.dumps(settings_record(method, config), sort_keys=True),
    }
    if preserve is not None:
        meta["sepme.preserve_prompts"] = json.dumps(list(preserve))
    return meta


def settings_record(method: str, config: Any) -> dict[str, Any]:
    """The settings an increment records (manifest `settings`, `sepme.settings`)."""
    return {**asdict(config), "method": method}


@contextmanager
def frozen_unet(unet: Any) -> Iterator[None]:
    """A training run's frame: the UNet frozen (no parameter gradients) and in eval mode, the
    increment hooks attached; on exit the hooks are detached and each parameter's grad flag and
    the train/eval mode are put back as they were."""
    grad_flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    was_training = unet.training
    unet.requires_grad_(False)
    unet.eval()
    hooks.attach(unet)
    try:
        yield
    finally:
        hooks.detach(unet)
        for name, p in unet.named_parameters():
            p.requires_grad_(grad_flags[name])
        unet.train(was_training)


def dense_result(
    deltas: dict[str, torch.Tensor],
    meta: dict[str, str],
    history: list[float],
    reason: StopReason,
    passes_per_iteration: int,
    wall_s: float,
) -> MethodResult:
    """The result of a trained baseline: the dense ΔW after the last update, its loss record."""
    final = {name: d.detach().cpu() for name, d in deltas.items()}
    return MethodResult(
        increment=Increment.dense(final, meta),
        iterations=len(history),
        stop_reason=reason,
        unet_passes_training=passes_per_iteration * len(history),
        wall_s=wall_s,
        final_loss=history[-1],
        loss_history=history,
        stats={"final_loss": history[-1]},
    )


def check_training_inputs(pipe: Any, device: torch.device, latents: torch.Tensor) -> None:
    """The pipeline is on `device` and `latents` is a non-empty `[N, C, h, w]` batch."""
    if pipe.unet.device.type != device.type:
        raise InvalidInput(f"the pipeline is on {pipe.unet.device}, not on {device}")
    if latents.dim() != 4 or latents.shape[0] < 1:
        raise InvalidInput(f"training latents must be [N, C, h, w], got {tuple(latents.shape)}")


class NoisedDraw:
    """Draws `(x_t, t)` batches from the training latents, reproducibly (see module doc)."""

    def __init__(self, pipe: Any, latents: torch.Tensor, seed: int) -> None:
        from diffusers import DDPMScheduler

        schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        self.alphas_cumprod = schedule.alphas_cumprod.to(torch.float32)
        self.n_train_t = int(schedule.config.num_train_timesteps)
        self.latents = latents.detach().to("cpu", torch.float32)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x_t [B, C, h, w] in dtype, t [B] long)` on `device`."""
        g = self.generator
        idx = torch.randint(0, self.latents.shape[0], (batch_size,), generator=g)
        t = torch.randint(0, self.n_train_t, (batch_size,), generator=g)
        noise = torch.randn((batch_size, *self.latents.shape[1:]), generator=g)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * self.latents[idx] + (1.0 - a).sqrt() * noise
        return x_t.to(device, dtype), t.to(device)


def check_finite(method: str, iteration: int, value: float) -> None:
    """Raise TrainingDiverged for a non-finite loss."""
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{method}: the loss became non-finite at iteration {iteration} ({value})",
            hint="lower the learning rate, or train in float32",
        )


def concept_positions(pipe: Any, prompt: str) -> list[int]:
    """Token positions of `prompt`'s own tokens in the padded sequence the UNet sees: 1..n−2 for
    n tokens including the start and end tokens (BOS, EOS and padding excluded)."""
    n = len(pipe.tokenizer(prompt, truncation=True).input_ids)
    positions = list(range(1, n - 1))
    if not positions:
        raise InvalidInput(
            f"the prompt {prompt!r} has no tokens besides the start/end tokens",
            hint="give the concept as a non-empty prompt",
        )
    return positions


def image_defaults(arch: str, erase: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's settings (the Config's defaults) and the base profile's training images: the
    `defaults` of a method that trains on images sampled from the concept prompt (ESD-x, FMN)."""
    del arch
    return {k: erase[k] for k in ("images", "image_steps", "image_guidance") if k in erase}
