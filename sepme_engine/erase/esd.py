"""ESD-x: Erased Stable Diffusion, cross-attention variant ("esd-x-strict").

R. Gandikota, J. Materzyńska, J. Fiotto-Kaufman, D. Bau, "Erasing Concepts from Diffusion
Models", ICCV 2023. The model is fine-tuned so that its conditional prediction for the concept
becomes the frozen model's prediction with *negative* guidance away from the concept:

    target = ε*(x_t, "") − η · (ε*(x_t, c) − ε*(x_t, ""))          (ε* = frozen base, η = 1)
    L      = mean( (ε_tuned(x_t, c) − target)² )

"-x" means only the cross-attention to_k / to_v change; here as dense increments ΔW_ℓ
(zero-initialised float32, Adam on ΔW — the same trajectory as Adam on W itself, since Adam is
invariant to a constant offset). "ε" is the raw UNet output (noise, or v for v-prediction
models).

Deviation from the paper, chosen for cost: the paper builds x_t by partially denoising with the
*tuned* model from the concept prompt (a DDIM run of up to 50 steps per iteration) and samples t
from that 50-step grid. Here x_t is a base-model training latent (`data.generate_training_latents`)
noised to a uniformly drawn training timestep t ∈ {0..T−1} (the draw of `common.NoisedDraw`, the
same as SepME's), so each iteration costs exactly 3·B UNet passes: one frozen pass on (c, "")
batched (2·B) and one tuned pass on c (B). Note that ESD-x also changes the tuned model's
unconditional prediction (its ΔW acts on e("") too); ESD does not prevent that.

The returned increment is ΔW after `steps` optimiser updates; `loss_history[n]` is the loss of
the forward pass before update n (so `final_loss` is the loss just before the last update).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.erase.common import (
    MethodResult,
    MethodStep,
    NoisedDraw,
    StopReason,
    check_finite,
    check_training_inputs,
    dense_result,
    frozen_unet,
    image_defaults,
    provenance,
)
from sepme_engine.errors import InvalidInput
from sepme_engine.models.text import check_prompt, encode_prompts

NAME = METHOD = "esd-x"


@dataclass(frozen=True)
class EsdConfig:
    """ESD-x hyper-parameters. Defaults are the paper's for SD 1.4 (1000 steps, lr 1e-5,
    negative guidance 1, batch 1); tiny models need a larger lr."""

    steps: int = 1000
    lr: float = 1e-5
    eta: float = 1.0  # negative guidance scale η
    batch_size: int = 1
    seed: int = 0  # of the training images and the iterations
    # the training images (data.generate_training_latents); `sepme erase` sets them from the
    # base profile
    images: int = 8
    image_steps: int = 25
    image_guidance: float = 7.5

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInput("ESD steps and batch_size must be >= 1")
        if self.images < 1 or self.image_steps < 1:
            raise InvalidInput("ESD images and image_steps must be >= 1")
        if not self.lr > 0:
            raise InvalidInput(f"ESD lr must be > 0, got {self.lr}")
        if not self.eta >= 0:
            raise InvalidInput(f"ESD eta must be >= 0, got {self.eta}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_esd(
    pipe: Any,
    prompt: str,
    latents: torch.Tensor,
    config: EsdConfig,
    device: str | torch.device,
    progress: Callable[[MethodStep], None] | None = None,
) -> MethodResult:
    """Erase `prompt` with ESD-x; return the dense increment (the pipe is left unchanged).

    `latents` `[N, 4, h, w]`: training x_0 from `data.generate_training_latents`. `pipe` must
    already be on `device` (any dtype; ΔW and the loss are float32).
    Raises InvalidInput, TrainingDiverged.
    """
    start = time.perf_counter()
    device = torch.device(device)
    unet = pipe.unet
    check_prompt(pipe, prompt)
    check_training_inputs(pipe, device, latents)

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
    emb = encode_prompts(pipe, [prompt, ""]).to(device, udtype)
    e_c = emb[:1].expand(bsz, -1, -1)
    e_frozen = torch.cat([e_c, emb[1:].expand(bsz, -1, -1)])

    history: list[float] = []
    reason: StopReason = "cap"
    with frozen_unet(unet):
        hooks.set_terms(unet, {name: [(None, d)] for name, d in deltas.items()})
        for n in range(config.steps):
            x_t, t = draw.draw(bsz, device, udtype)
            with torch.no_grad(), hooks.deltas_enabled(unet, False):
                frozen = unet(
                    torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=e_frozen
                ).sample
            eps_c, eps_u = frozen.float().chunk(2)
            target = eps_u - config.eta * (eps_c - eps_u)
            with hooks.deltas_enabled(unet, True):
                eps_tuned = unet(x_t, t, encoder_hidden_states=e_c).sample.float()
            loss = torch.nn.functional.mse_loss(eps_tuned, target)
            loss_v = float(loss.detach())
            check_finite(METHOD, n, loss_v)
            history.append(loss_v)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(MethodStep(METHOD, n, config.steps, loss_v, time.perf_counter() - start))

    meta = {
        **provenance(NAME, config),
        "sepme.prompt": prompt,
        "sepme.dtype": str(udtype).removeprefix("torch."),
        "sepme.iterations": str(len(history)),
        "sepme.stop_reason": reason,
        "sepme.final_loss": repr(history[-1]),
    }
    return dense_result(deltas, meta, history, reason, 3 * bsz, time.perf_counter() - start)


# --- the method as `sepme erase` runs it (erase/__init__.py) -------------------------------------

Config = EsdConfig
Step = MethodStep
WORDS: Mapping[str, str] = {}
SET_BY_RUN: tuple[str, ...] = ()
TRAINING_DATA = True
KEEPS_PRESERVE = False  # ESD-x has no preserve set


defaults = image_defaults


def train(
    pipe: Any,
    prompt: str,
    preserve_prompts: Sequence[str],
    latents: torch.Tensor | None,
    config: EsdConfig,
    device: str | torch.device,
    progress: Callable[[MethodStep], None] | None = None,
) -> MethodResult:
    del preserve_prompts
    if latents is None:
        raise InvalidInput("ESD-x trains on latents sampled from the concept prompt")
    return train_esd(pipe, prompt, latents, config, device, progress=progress)
