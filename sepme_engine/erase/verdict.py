"""Did the erasure work? A per-concept verdict measured after training.

Two measurements:

- **Residual correlation** ρ (any base): over a fixed set of `draws` training draws (x_0 from the
  concept's training latents, t, noise; its own seed, so it does not depend on the training run)

      ρ = Σ r_new ⊙ r_old / Σ r_old ⊙ r_old,   r_new = ε_θ+Δθ(c) − ε_θ(∅),  r_old = ε_θ(c) − ε_θ(∅)

  ρ = 1: the concept's guidance direction is unchanged; 0: uncorrelated with the base's (what
  G-CiRs aims at); < 0: pointing away. Scale-free, unlike L_cor. 3 · draws UNet passes.
- **Judged rate** (toy base only, where a judge exists): the bare concept prompt is sampled `n`
  times with the increment and the blank prompt with the same seeds (the blank prompt is in every
  E_k, so it is the base's blank, i.e. chance); the judge labels both. Erased = the concept's rate
  is at most the blank prompt's on the same seeds. n guided images, plus n unguided blank-prompt
  images once per pipeline (their labels are reused).

Advice (what would erase it, as data; an interface words it): "" when erased, "raise-steps" when
the run reached its iteration cap, "use-sepme" after a closed-form method (no iterations to add),
else "lower-tau" (SepME stopped on its threshold τ too early).

Status: toy — *erased* when the judged rate ≤ chance, *weakened* when ρ < 0.5 or the rate is
less than halfway from chance to 1, else *not erased*. Other bases — *erased* when ρ ≤ `rho_erased`
(0: decorrelated, the paper's target), *weakened* when ρ < 0.5, else *not erased*.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.increment import Increment
from sepme_engine.erase.common import NoisedDraw
from sepme_engine.models.text import encode_prompts

Status = Literal["erased", "weakened", "not erased"]
Advice = Literal["", "raise-steps", "use-sepme", "lower-tau"]
ADVICE: tuple[Advice, ...] = ("raise-steps", "use-sepme", "lower-tau")
RHO_ERASED = 0.0
RHO_WEAKENED = 0.5


@dataclass(frozen=True)
class Verdict:
    status: Status
    correlation: float  # ρ
    judged_rate: float | None = None  # toy: the concept's rate on its bare prompt, with ΔW
    chance_rate: float | None = None  # toy: its rate on the blank prompt, same seeds
    samples: int = 0  # toy: images per prompt
    unet_passes: int = 0
    advice: Advice = ""  # what would erase it (module docstring); "" when erased

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def residual_correlation(
    pipe: Any,
    increment: Increment,
    prompt: str,
    latents: torch.Tensor,
    draws: int = 16,
    seed: int = 12345,
    batch: int = 8,
) -> tuple[float, int]:
    """`(ρ, UNet passes)` of `increment` for `prompt` (module docstring)."""
    unet = pipe.unet
    device = unet.device
    draw = NoisedDraw(pipe, latents, seed)
    e_c = encode_prompts(pipe, [prompt]).to(device, unet.dtype)
    e_u = encode_prompts(pipe, [""]).to(device, unet.dtype)
    num = den = 0.0
    passes = 0
    with hooks.attached(unet, [increment]):
        done = 0
        while done < draws:
            b = min(batch, draws - done)
            x_t, t = draw.draw(b, device, unet.dtype)
            ec, eu = e_c.expand(b, -1, -1), e_u.expand(b, -1, -1)
            with hooks.deltas_enabled(unet, False):
                frozen = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([ec, eu])).sample
            old_c, eps_u = frozen.float().chunk(2)
            new_c = unet(x_t, t, ec).sample.float()
            r_old, r_new = old_c - eps_u, new_c - eps_u
            num += float((r_new.double() * r_old.double()).sum())
            den += float((r_old.double() ** 2).sum())
            passes += 3 * b
            done += b
    return (num / den if den > 0 else 0.0), passes


def toy_judged_rates(
    pipe: Any, increment: Increment, prompt: str, concept: str, n: int = 8, seed: int = 0
) -> tuple[float, float, int]:
    """`(rate with ΔW on the bare prompt, rate on the blank prompt, UNet passes)` for a toy
    concept, same seeds, the toy's sampler settings.

    The blank prompt's images do not depend on the increment (the blank prompt is in every E_k,
    so ΔW·e("")ᵀ = 0) nor on the guidance scale (its conditional and unconditional branches are
    the same prompt: ε_∅ + g·(ε_∅ − ε_∅) = ε_∅), so they are sampled once per pipeline, seed and
    n, without guidance (one pass per step instead of two), and their labels are reused: the
    verdict of a second concept costs only its own prompt's n · steps · 2 passes."""
    from sepme_engine.sampling import sample_images
    from sepme_engine.toy import TOY_GUIDANCE, TOY_STEPS
    from sepme_engine.toy.judge import judge_batch
    from sepme_engine.toy.world import axis_of

    axis = axis_of(concept)
    passes = n * TOY_STEPS * 2
    per_unet = _BLANK_LABELS.setdefault(pipe.unet, {})
    blank = per_unet.get((seed, n))
    if blank is None:
        blank = judge_batch(sample_images(pipe, [""], seed, n, TOY_STEPS, 1.0))
        per_unet[(seed, n)] = blank
        passes += n * TOY_STEPS
    with hooks.apply_deltas_inplace(pipe.unet, hooks.sum_deltas([increment])):
        imgs = sample_images(pipe, [prompt], seed, n, TOY_STEPS, TOY_GUIDANCE)
    v = judge_batch(imgs)
    rate = sum(x.get(axis) == concept for x in v) / n
    chance = sum(x.get(axis) == concept for x in blank) / n
    return rate, chance, passes


# UNet -> {(seed, n): judge labels of the blank prompt's n samples} (toy_judged_rates); weak, so a
# pipeline that is dropped takes its entry with it
_BLANK_LABELS: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def classify(
    rho: float,
    judged: tuple[float, float] | None,
    stop_reason: str,
    rho_erased: float = RHO_ERASED,
) -> tuple[Status, Advice]:
    """(status, advice) from ρ and, on the toy base, (rate, chance), and the run's stop reason."""
    status: Status
    if judged is not None:
        rate, chance = judged
        if rate <= chance:
            status = "erased"
        elif rho < RHO_WEAKENED or rate < chance + 0.5 * (1.0 - chance):
            status = "weakened"
        else:
            status = "not erased"
    elif rho <= rho_erased:
        status = "erased"
    elif rho < RHO_WEAKENED:
        status = "weakened"
    else:
        status = "not erased"
    if status == "erased":
        return status, ""
    if stop_reason == "cap":
        return status, "raise-steps"
    if stop_reason == "closed-form":
        return status, "use-sepme"
    return status, "lower-tau"


def verdict(
    pipe: Any,
    increment: Increment,
    prompt: str,
    latents: torch.Tensor | None,
    stop_reason: str,
    toy_concept: str | None = None,
    toy_samples: int = 8,
    draws: int = 16,
    extra_passes: Sequence[int] = (),
) -> Verdict:
    """Measure ρ (when `latents` are given) and, for a toy concept, the judged rates; classify."""
    rho, passes = (
        residual_correlation(pipe, increment, prompt, latents, draws)
        if latents is not None
        else (float("nan"), 0)
    )
    judged = None
    if toy_concept is not None:
        rate, chance, p2 = toy_judged_rates(pipe, increment, prompt, toy_concept, toy_samples)
        judged = (rate, chance)
        passes += p2
    status, advice = classify(rho if rho == rho else 1.0, judged, stop_reason)
    return Verdict(
        status,
        rho,
        judged[0] if judged else None,
        judged[1] if judged else None,
        toy_samples if judged else 0,
        passes + sum(extra_passes),
        advice,
    )
