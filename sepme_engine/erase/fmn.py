"""FMN: Forget-Me-Not attention re-steering.

E. Zhang, K. Wang, X. Xu, Z. Wang, H. Shi, "Forget-Me-Not: Learning to Forget in Text-to-Image
Diffusion Models", 2023 (arXiv 2211.08332). The model is tuned for a few dozen steps so that the
cross-attention stops looking at the concept's tokens:

    mass_ℓ = mean over batch, heads and query pixels of Σ_{j ∈ concept tokens} softmax(q kᵀ/√d)_j
    L      = mean over the cross-attention (attn2) layers ℓ of mass_ℓ

with q = to_q(hidden states) of the image and k = to_k(e(c)) from the tuned to_k; the concept
tokens are the prompt's own tokens (BOS, EOS and padding excluded). x_t: a base-model training
latent noised to a uniformly drawn training timestep (`common.NoisedDraw`, as SepME/ESD), one
tuned UNet pass on c per sample per iteration.

Choices where the reference is loose: the reference code sums `torch.norm` of the selected
attention probabilities; here the loss is the mean probability *mass* on the concept tokens, a
number in [0, 1] that reads directly ("the image attends 37% to the concept"). Only to_k/to_v
ΔW are trained (dense, zero-initialised, Adam). A layer's attention probabilities do not depend
on its own values, but to_v changes what later layers see (their queries), so the to_v ΔW are
trained too (more weakly).

The probabilities are computed by `MassRecordingProcessor`, set on every attn2 module for the
duration of training: it records the mass and then performs the ordinary attention with those
same probabilities, so the UNet output is that of diffusers' classic `AttnProcessor`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sepme_engine.delta import hooks
from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.erase.common import (
    MethodResult,
    MethodStep,
    NoisedDraw,
    StopReason,
    check_finite,
    check_training_inputs,
    concept_positions,
    dense_result,
    frozen_unet,
    image_defaults,
    provenance,
)
from sepme_engine.errors import InvalidInput
from sepme_engine.models.text import check_prompt, encode_prompts

NAME = METHOD = "fmn"


@dataclass(frozen=True)
class FmnConfig:
    """FMN hyper-parameters: 35 steps as in the paper; lr is for Adam on ΔW."""

    steps: int = 35
    lr: float = 1e-3
    batch_size: int = 1
    seed: int = 0  # of the training images and the iterations
    # the training images (data.generate_training_latents); `sepme erase` sets them from the
    # base profile
    images: int = 8
    image_steps: int = 25
    image_guidance: float = 7.5

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInput("FMN steps and batch_size must be >= 1")
        if self.images < 1 or self.image_steps < 1:
            raise InvalidInput("FMN images and image_steps must be >= 1")
        if not self.lr > 0:
            raise InvalidInput(f"FMN lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MassRecordingProcessor:
    """A diffusers attention processor for cross-attention: the classic `AttnProcessor`
    computation that also appends, per call, the mean softmax mass on `positions` to
    `self.masses` (a float32 scalar tensor that keeps its autograd graph)."""

    def __init__(self, positions: Sequence[int]) -> None:
        self.positions = list(positions)
        self.masses: list[torch.Tensor] = []

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise InvalidInput("MassRecordingProcessor is for cross-attention (attn2) only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)

        probs = attn.get_attention_scores(query, key, attention_mask)  # [B·heads, N, L]
        self.masses.append(probs[..., self.positions].float().sum(-1).mean())

        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _cross_attention_modules(unet: nn.Module) -> dict[str, Any]:
    return {
        name: m
        for name, m in unet.named_modules()
        if name.endswith(".attn2") and hasattr(m, "set_processor")
    }


@contextmanager
def recording_mass(unet: nn.Module, positions: Sequence[int]) -> Iterator[MassRecordingProcessor]:
    """Set one `MassRecordingProcessor` on every attn2 module; put the previous processors back
    on exit. Each UNet forward appends one mass per attn2 layer to `processor.masses`."""
    modules = _cross_attention_modules(unet)
    if not modules:
        raise InvalidInput("the UNet has no cross-attention (attn2) modules")
    processor = MassRecordingProcessor(positions)
    previous = {name: m.processor for name, m in modules.items()}
    try:
        for m in modules.values():
            m.set_processor(processor)
        yield processor
    finally:
        for name, m in modules.items():
            m.set_processor(previous[name])


def train_fmn(
    pipe: Any,
    prompt: str,
    latents: torch.Tensor,
    config: FmnConfig,
    device: str | torch.device,
    progress: Callable[[MethodStep], None] | None = None,
) -> MethodResult:
    """Erase `prompt` with Forget-Me-Not attention re-steering; return the dense increment (the
    pipe is left unchanged). Arguments as `esd.train_esd`. `final_loss` / `loss_history`: the
    concept-token attention mass of the forward pass before each update.
    Raises InvalidInput, TrainingDiverged.
    """
    start = time.perf_counter()
    device = torch.device(device)
    unet = pipe.unet
    check_prompt(pipe, prompt)
    check_training_inputs(pipe, device, latents)
    positions = concept_positions(pipe, prompt)

    layers = cross_attention_kv(unet)
    if not layers:
        raise InvalidInput("the UNet has no cross-attention to_k/to_v layers")
    deltas = {
        name: torch.zeros(
            m.out_features, m.in_features, device=device, dtype=torch.float32, requires_grad=True
        )
        for name, m in layers
    }
    optimizer = torch.optim.Adam(list(deltas.values()), lr=config.lr)
    draw = NoisedDraw(pipe, latents, config.seed)
    udtype = unet.dtype
    bsz = config.batch_size
    e_c = encode_prompts(pipe, [prompt]).to(device, udtype).expand(bsz, -1, -1)

    history: list[float] = []
    reason: StopReason = "cap"
    with frozen_unet(unet):
        hooks.set_terms(unet, {name: [(None, d)] for name, d in deltas.items()})
        with recording_mass(unet, positions) as recorder:
            for n in range(config.steps):
                x_t, t = draw.draw(bsz, device, udtype)
                recorder.masses.clear()
                unet(x_t, t, encoder_hidden_states=e_c)
                loss = torch.stack(recorder.masses).mean()
                loss_v = float(loss.detach())
                check_finite(METHOD, n, loss_v)
                history.append(loss_v)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                recorder.masses.clear()
                if progress is not None:
                    progress(
                        MethodStep(METHOD, n, config.steps, loss_v, time.perf_counter() - start)
                    )

    meta = {
        **provenance(NAME, config),
        "sepme.prompt": prompt,
        "sepme.dtype": str(udtype).removeprefix("torch."),
        "sepme.concept_positions": json.dumps(positions),
        "sepme.iterations": str(len(history)),
        "sepme.stop_reason": reason,
        "sepme.final_loss": repr(history[-1]),
    }
    return dense_result(deltas, meta, history, reason, bsz, time.perf_counter() - start)


# --- the method as `sepme erase` runs it (erase/__init__.py) -------------------------------------

Config = FmnConfig
Step = MethodStep
WORDS: Mapping[str, str] = {}
SET_BY_RUN: tuple[str, ...] = ()
TRAINING_DATA = True
KEEPS_PRESERVE = False  # FMN has no preserve set


defaults = image_defaults


def train(
    pipe: Any,
    prompt: str,
    preserve_prompts: Sequence[str],
    latents: torch.Tensor | None,
    config: FmnConfig,
    device: str | torch.device,
    progress: Callable[[MethodStep], None] | None = None,
) -> MethodResult:
    del preserve_prompts
    if latents is None:
        raise InvalidInput("FMN trains on latents sampled from the concept prompt")
    return train_fmn(pipe, prompt, latents, config, device, progress=progress)
