"""A toy erasure method for tests/test_erase_registry.py: one module, registered in a test, run
through `sepme erase`'s engine entry point. Its increment is `scale` on every to_k / to_v weight
entry (no training), and it reports one step."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.erase.common import MethodResult, MethodStep, dense_result, provenance
from sepme_engine.errors import InvalidInput

NAME = "toy-scale"
WORDS: Mapping[str, str] = {}
SET_BY_RUN: tuple[str, ...] = ()
TRAINING_DATA = False
KEEPS_PRESERVE = False
Step = MethodStep


@dataclass(frozen=True)
class Config:
    scale: float = 1e-3
    steps: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InvalidInput("toy steps must be >= 1")


def defaults(arch: str, erase: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def train(
    pipe: Any,
    prompt: str,
    preserve_prompts: Sequence[str],
    latents: Any,
    config: Config,
    device: Any,
    progress: Callable[[MethodStep], None] | None = None,
) -> MethodResult:
    import torch

    start = time.perf_counter()
    deltas = {
        name: torch.full((m.out_features, m.in_features), config.scale)
        for name, m in cross_attention_kv(pipe.unet)
    }
    if progress is not None:
        progress(MethodStep(NAME, 0, config.steps, config.scale, 0.0))
    meta = {**provenance(NAME, config), "sepme.prompt": prompt}
    return dense_result(deltas, meta, [config.scale], "cap", 0, time.perf_counter() - start)
