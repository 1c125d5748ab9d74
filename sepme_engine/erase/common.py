"""What the baseline erasure methods (ESD-x, FMN, UCE) share: their result and progress types,
the input checks, and the training draw (x_0, t, noise -> x_t) used by the trained ones.

The draw is the same as SepME's (`sepme.py`): from one CPU `torch.Generator`, per iteration,
`idx` (which training latents), `t ~ U{0..T-1}` of the model's training schedule, and standard
normal noise; `x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·noise` with ᾱ from a `DDPMScheduler` built from
the pipeline's scheduler config. So a run is reproducible and draws the same batches on any
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sepme_engine.delta.increment import Increment
from sepme_engine.errors import InvalidInput, TrainingDiverged

StopReason = Literal["cap", "closed-form", "interrupted"]


@dataclass(frozen=True)
class MethodResult:
    """The outcome of one baseline erasure of one concept."""

    increment: Increment  # dense ΔW for every cross-attention to_k / to_v
    iterations: int  # optimiser steps taken (0 for closed-form methods)
    stop_reason: StopReason
    unet_passes_training: int  # UNet evaluations, counted per sample (batch entries)
    wall_s: float
    final_loss: float  # the method's loss at the last evaluation (see each module)
    loss_history: list[float] = field(repr=False)


@dataclass(frozen=True)
class MethodStep:
    """What a progress display shows after each iteration of a trained baseline."""

    method: str
    iteration: int  # from 0
    max_steps: int
    loss: float
    elapsed_s: float


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
