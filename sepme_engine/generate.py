"""`sepme generate` and `sepme eval` over the store: sample a base with a composition applied.

The composition (active set, a variant, or an explicit --erase list) is applied in place with the
canonical rule (W.float() + D).to(dtype) and removed afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.bases import TOY, BaseInfo, get_base, load_base
from sepme_engine.compose import composition_deltas, selection
from sepme_engine.config import load_config
from sepme_engine.device import resolve_device
from sepme_engine.errors import InvalidInput
from sepme_engine.store import Store

SD_STEPS, SD_GUIDANCE = 30, 7.5


@dataclass(frozen=True)
class GenerateReport:
    base: str
    path: str
    prompts: tuple[str, ...]
    erased: tuple[str, ...]
    compare: bool
    n: int
    seed: int
    steps: int
    guidance: float
    # prompts longer than the base's text encoder reads: (prompt, tokens, limit); their tail
    # was cut off by the pipeline
    truncated: tuple[tuple[str, int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["truncated"] = [{"prompt": p, "tokens": n, "limit": k} for p, n, k in self.truncated]
        return data


def sampling_defaults(info: BaseInfo) -> tuple[int, float]:
    if info.profile == TOY:
        from sepme_engine.toy import TOY_GUIDANCE, TOY_STEPS

        return int(TOY_STEPS), float(TOY_GUIDANCE)
    return SD_STEPS, SD_GUIDANCE


@contextlib.contextmanager
def composed(store: Store, info: BaseInfo, pipe: Any, names: Sequence[str]) -> Iterator[None]:
    from sepme_engine.delta.hooks import apply_deltas_inplace

    if not names:
        yield
        return
    with apply_deltas_inplace(pipe.unet, composition_deltas(store, info, names)):
        yield


def _select(
    store: Store, info: BaseInfo, variant: str | None, erase: Sequence[str] | None, plain: bool
) -> tuple[str, ...]:
    if plain:
        if variant or erase:
            raise InvalidInput(
                "a plain render uses no increment, but some were selected",
                hint="drop the selection or the plain render",
                kind="plain-and-selection",
            )
        return ()
    return selection(store, info, variant=variant, erase=erase)


def generate(
    store: Store,
    prompts: Sequence[str],
    out: Path,
    *,
    base: str | None = None,
    seed: int = 0,
    n: int = 4,
    steps: int | None = None,
    guidance: float | None = None,
    compare: bool = False,
    variant: str | None = None,
    erase: Sequence[str] | None = None,
    plain: bool = False,
    device: str | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> GenerateReport:
    """Render a labelled grid: one row per prompt (two with --compare: the base's row above the
    composition's). `progress(done, total)` counts images, updated every denoising step."""
    import numpy as np

    from sepme_engine.sampling import image_grid, prompt_overflow, sample_images
    from sepme_engine.store.atomic import atomic_open

    if not prompts or any(not p.strip() for p in prompts):
        raise InvalidInput(
            "give at least one non-empty prompt",
            kind="no-prompt",
        )
    if n < 1:
        raise InvalidInput(f"n (images per prompt) must be at least 1, got {n}", kind="n-images")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InvalidInput(
            f"{out} is not an image path", hint="give a .png path", kind="image-path"
        )
    info = get_base(store, base)
    names = _select(store, info, variant, erase, plain)
    d_steps, d_guidance = sampling_defaults(info)
    steps = steps or d_steps
    guidance = d_guidance if guidance is None else guidance
    dev = resolve_device(device or load_config(store.root).get("device"))
    pipe = load_base(store, info.name, device=str(dev))
    truncated = tuple(prompt_overflow(pipe, prompts))
    rows: list[np.ndarray] = []
    labels: list[str] = []
    step = _counter(progress, len(prompts) * n * (2 if compare else 1))
    for prompt in prompts:
        if compare:
            rows.append(
                sample_images(
                    pipe, [prompt], seed, n, steps, guidance, device=str(dev), progress=step
                )
            )
            labels.append(f"base: {prompt}")
        with composed(store, info, pipe, names):
            rows.append(
                sample_images(
                    pipe, [prompt], seed, n, steps, guidance, device=str(dev), progress=step
                )
            )
        tag = ("-" + ",".join(names)) if names else ""
        labels.append(f"{'erased' + tag if compare or names else 'base'}: {prompt}")
    images = np.concatenate(rows)
    grid = image_grid(images, rows=len(rows), cols=n, row_labels=labels)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(out.suffix.lower(), "PNG")
    with atomic_open(out) as fh:
        grid.save(fh, format=fmt)
        _user_file_mode(fh)
    return GenerateReport(
        info.name, str(out), tuple(prompts), names, compare, n, seed, steps, guidance, truncated
    )


def _counter(
    progress: Callable[[float, int], None] | None, total: int
) -> Callable[[float], None] | None:
    """Turn per-step increments into progress(done, total) calls."""
    if progress is None:
        return None
    done = 0.0
    progress(0, total)

    def step(k: float) -> None:
        nonlocal done
        done = min(float(total), done + k)
        progress(done, total)

    return step


@dataclass(frozen=True)
class EvalResult:
    """`sepme eval`: the toy judge's report for the composition, and for the bare base with
    the same seeds when compared (`base_report`)."""

    erased: tuple[str, ...]
    report: Any  # toy EvalReport
    base_report: Any | None = None

    def to_dict(self) -> dict[str, Any]:
        """The composition's report, with `erased` and (compared) the bare base's as `base`."""
        data = dict(self.report.to_dict())
        data["erased"] = list(self.erased)
        if self.base_report is not None:
            data["base"] = self.base_report.to_dict()
        return data


def _user_file_mode(fh: Any) -> None:
    """Give a file the user asked for the mode `open()` would (0666 less the umask, like
    exports), not the 0600 of the store's private temporary files."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fh.fileno(), 0o666 & ~umask)


def evaluate_base(
    store: Store,
    *,
    base: str | None = None,
    n_per_prompt: int = 8,
    seed: int = 0,
    variant: str | None = None,
    erase: Sequence[str] | None = None,
    plain: bool = False,
    device: str | None = None,
    compare: bool = False,
    progress: Callable[[float, int], None] | None = None,
    prompts: Sequence[str] | None = None,
    n_blank: int = 64,
) -> EvalResult:
    """The toy judge over the toy world's fixed prompt set, with the composition applied (and,
    with `compare`, once more on the bare base). `progress(done, total)` counts images."""
    info = get_base(store, base)
    if info.profile != TOY:
        raise InvalidInput(
            f"the judge only applies to the toy world; base {info.name!r} is not the toy base",
            kind="not-toy",
            base=info.name,
        )
    from sepme_engine.toy.evaluate import eval_image_count, evaluate

    names = _select(store, info, variant, erase, plain)
    if compare and not names:
        raise InvalidInput(
            "nothing to compare: no increment is selected, so it would be the base twice",
            hint="erase a concept first, or select some",
            kind="compare-nothing",
        )
    dev = resolve_device(device or load_config(store.root).get("device"))
    pipe = load_base(store, info.name, device=str(dev))
    steps, guidance = sampling_defaults(info)
    n_prompts = None if prompts is None else len(prompts)
    per_run = eval_image_count(n_per_prompt, n_prompts, n_blank)
    step = _counter(progress, per_run * (2 if compare else 1))
    kw: dict[str, Any] = dict(
        n_per_prompt=n_per_prompt,
        seed=seed,
        steps=steps,
        guidance=guidance,
        prompts=prompts,
        n_blank=n_blank,
        progress=step,
    )
    base_report = None
    if compare:
        base_report = evaluate(pipe, **kw)
    with composed(store, info, pipe, names):
        report = evaluate(pipe, **kw)
    return EvalResult(names, report, base_report)
