"""Evaluate a toy pipeline with the analytic judge.

`evaluate` samples every full prompt "a {colour} {shape} on {style}" (72 of them by default),
the bare concept prompts ("circle", "red", "stripes", ...) and the blank prompt, judges every
image and returns per-concept rates in a frozen `EvalReport`. `concept_rates` judges samples of
arbitrary prompts for one concept (used by the erasure benchmarks). Deterministic for a seed on
CPU (see `sepme_engine.sampling.sample_images`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sepme_engine.errors import InvalidInput
from sepme_engine.toy import TOY_GUIDANCE, TOY_SAMPLER, TOY_STEPS
from sepme_engine.toy.judge import Verdict, judge_batch
from sepme_engine.toy.world import AXES, COLOURS, CONCEPTS, SHAPES, STYLES, axis_of, full_caption


def full_prompts() -> list[str]:
    """All 72 full prompts, colour-major then shape then style."""
    return [full_caption(c, s, t) for c, s, t in itertools.product(COLOURS, SHAPES, STYLES)]


def concepts_in(prompt: str) -> dict[str, str]:
    """The toy concepts a prompt names, by axis: {"colour": "red", "shape": "circle", ...}."""
    words = prompt.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    for w in words:
        if w in CONCEPTS:
            found.setdefault(axis_of(w), w)
    return found


def rate(verdicts: Sequence[Verdict], concept: str) -> float:
    """Fraction of verdicts that show `concept` on its axis."""
    if not verdicts:
        return float("nan")
    axis = axis_of(concept)
    return sum(v.get(axis) == concept for v in verdicts) / len(verdicts)


@dataclass(frozen=True)
class ConceptRates:
    concept: str
    axis: str
    n_per_prompt: int
    per_prompt: dict[str, float]  # prompt -> fraction of its samples judged as `concept`
    mean: float  # over all samples


@dataclass(frozen=True)
class EvalReport:
    steps: int
    guidance: float
    sampler: str
    seed: int
    n_per_prompt: int
    n_blank: int
    n_full_prompts: int
    full: dict[str, float]  # concept -> accuracy on full prompts naming it
    axis_accuracy: dict[str, float]  # axis -> accuracy over all full-prompt samples
    all_correct: float  # fraction of full-prompt samples right on all three axes
    bare: dict[str, float]  # concept -> accuracy for the one-word prompt
    chance: dict[str, float]  # concept -> rate in blank-prompt samples
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def min_full(self) -> float:
        return min(self.full.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def concept_rates(
    pipe: Any,
    prompts: Sequence[str],
    concept: str,
    n: int = 8,
    seed: int = 0,
    steps: int = TOY_STEPS,
    guidance: float = TOY_GUIDANCE,
    batch_size: int = 64,
) -> ConceptRates:
    """Sample `n` images of each prompt and report how often the judge sees `concept`."""
    from sepme_engine.sampling import sample_images

    axis = axis_of(concept)
    images = sample_images(pipe, list(prompts), seed, n, steps, guidance, batch_size=batch_size)
    verdicts = judge_batch(images)
    per = {p: rate(verdicts[i * n : (i + 1) * n], concept) for i, p in enumerate(prompts)}
    return ConceptRates(concept, axis, n, per, rate(verdicts, concept))


def eval_image_count(
    n_per_prompt: int = 8,
    n_prompts: int | None = None,
    n_blank: int = 64,
    n_bare: int | None = None,
) -> int:
    """How many images `evaluate` samples with these settings (a progress bar's total)."""
    n_prompts = len(full_prompts()) if n_prompts is None else n_prompts
    n_bare = n_per_prompt if n_bare is None else n_bare
    return n_prompts * n_per_prompt + len(SHAPES + COLOURS + STYLES) * n_bare + n_blank


def evaluate(
    pipe: Any,
    n_per_prompt: int = 8,
    seed: int = 0,
    steps: int = TOY_STEPS,
    guidance: float = TOY_GUIDANCE,
    prompts: Sequence[str] | None = None,
    n_blank: int = 64,
    n_bare: int | None = None,
    batch_size: int = 64,
    progress: Callable[[float], None] | None = None,
) -> EvalReport:
    """Judge samples of full prompts, bare concept prompts and the blank prompt.

    `progress(k)` gets the images sampled since its last call; they add up to
    `eval_image_count(...)`."""
    import time

    from sepme_engine.sampling import sample_images

    t0 = time.time()
    prompts = list(prompts) if prompts is not None else full_prompts()
    if not prompts:
        raise InvalidInput("no prompts to evaluate", hint="omit prompts= to use all 72")
    n_bare = n_per_prompt if n_bare is None else n_bare

    imgs = sample_images(
        pipe, prompts, seed, n_per_prompt, steps, guidance, batch_size=batch_size, progress=progress
    )
    verdicts = judge_batch(imgs)
    hits: dict[str, list[bool]] = {c: [] for c in CONCEPTS}
    axis_hits: dict[str, list[bool]] = {a: [] for a in AXES}
    all_ok: list[bool] = []
    for i, p in enumerate(prompts):
        named = concepts_in(p)
        for v in verdicts[i * n_per_prompt : (i + 1) * n_per_prompt]:
            oks = []
            for axis, concept in named.items():
                ok = v.get(axis) == concept
                hits[concept].append(ok)
                axis_hits[axis].append(ok)
                oks.append(ok)
            all_ok.append(all(oks))
    full = {c: float(np.mean(h)) for c, h in hits.items() if h}
    axis_acc = {a: float(np.mean(h)) for a, h in axis_hits.items() if h}

    bare: dict[str, float] = {}
    if n_bare > 0:
        bare_prompts = list(SHAPES + COLOURS + STYLES)
        bimgs = sample_images(
            pipe,
            bare_prompts,
            seed,
            n_bare,
            steps,
            guidance,
            batch_size=batch_size,
            progress=progress,
        )
        bver = judge_batch(bimgs)
        bare = {c: rate(bver[i * n_bare : (i + 1) * n_bare], c) for i, c in enumerate(bare_prompts)}

    chance: dict[str, float] = {}
    if n_blank > 0:
        blank = sample_images(
            pipe, [""], seed, n_blank, steps, guidance, batch_size=batch_size, progress=progress
        )
        bl = judge_batch(blank)
        chance = {c: rate(bl, c) for c in CONCEPTS}

    return EvalReport(
        steps=steps,
        guidance=guidance,
        sampler=type(pipe.scheduler).__name__ if hasattr(pipe, "scheduler") else TOY_SAMPLER,
        seed=seed,
        n_per_prompt=n_per_prompt,
        n_blank=n_blank,
        n_full_prompts=len(prompts),
        full=full,
        axis_accuracy=axis_acc,
        all_correct=float(np.mean(all_ok)),
        bare=bare,
        chance=chance,
        seconds=time.time() - t0,
    )


__all__ = [
    "ConceptRates",
    "EvalReport",
    "concept_rates",
    "concepts_in",
    "eval_image_count",
    "evaluate",
    "full_prompts",
    "rate",
]
