"""`sepme-cf`: SepME's closed-form decoupled increment alone, no UNet pass (closed_form.py for
the maths, `sepme.closed_form_sepme` for the run). Same E_k, null-space basis and increment
format as SepME; iterations 0, stop reason "closed-form"."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sepme_engine.erase.common import MethodResult
from sepme_engine.erase.nullspace import DEFAULT_RTOL
from sepme_engine.erase.sepme import SepMEConfig, StepInfo, closed_form_sepme, result_stats
from sepme_engine.erase.sepme import relax_e_k as _relax

NAME = "sepme-cf"
WORDS: Mapping[str, str] = {}
SET_BY_RUN = ("dtype",)
TRAINING_DATA = False
KEEPS_PRESERVE = True
Step = StepInfo  # never emitted: there are no iterations


@dataclass(frozen=True)
class Config:
    """What the closed form depends on (see SepMEConfig for each field)."""

    anchor: str = ""  # the concept's keys/values are mapped onto this prompt's
    cf_ridge: float = 0.1  # ridge λ of the least squares
    contexts: tuple[str, ...] = ()  # captions the concept is erased in / held by (closed_form.py)
    cf_push: float = 0.0  # η: the target moved past the anchor
    cf_hold: float = 0.0  # λ_h: weight of the held captions
    rtol: float = DEFAULT_RTOL  # null-space tolerance (nullspace.py)
    dtype: str = "float32"  # dtype the frozen text encoder runs in (recorded)

    def __post_init__(self) -> None:
        if not isinstance(self.contexts, tuple):  # a config.toml list
            object.__setattr__(self, "contexts", tuple(self.contexts))
        self.sepme()  # SepMEConfig's checks

    def sepme(self) -> SepMEConfig:
        return SepMEConfig(
            anchor=self.anchor,
            cf_ridge=self.cf_ridge,
            contexts=tuple(self.contexts),
            cf_push=self.cf_push,
            cf_hold=self.cf_hold,
            rtol=self.rtol,
            dtype=self.dtype,
            init="closed-form",
        )


def defaults(arch: str, erase: Mapping[str, Any]) -> dict[str, Any]:
    """The closed form's settings of the base profile's `[erase]` settings (SepME's), as SepME's
    own start."""
    del arch
    return {k: erase[k] for k in ("anchor", "contexts", "cf_push", "cf_hold") if k in erase}


def relax_e_k(
    pipe: Any, prompt: str, e_k: Sequence[str], removable: Sequence[str], config: Config
) -> tuple[list[str], list[str]]:
    """SepME's (sepme.relax_e_k): crowded concepts hold their pool neighbours softly."""
    return _relax(pipe, prompt, e_k, removable, config.sepme())


def train(
    pipe: Any,
    prompt: str,
    preserve_prompts: Sequence[str],
    latents: torch.Tensor | None,
    config: Config,
    device: str | torch.device,
    progress: Callable[[StepInfo], None] | None = None,
) -> MethodResult:
    del latents, progress  # no UNet pass
    r = closed_form_sepme(pipe, prompt, preserve_prompts, config.sepme(), device, record=config)
    return MethodResult(
        increment=r.increment,
        iterations=0,
        stop_reason="closed-form",
        unet_passes_training=0,
        wall_s=r.wall_s,
        final_loss=float("nan"),
        loss_history=[],
        m_k=r.m_k,
        stats=result_stats(r),
    )
