"""Sampling from any StableDiffusionPipeline, reproducibly, and labelled image grids.

`sample_images` gives image j of every prompt its own CPU `torch.Generator` seeded with
`seed + j` (or `seeds[j]`), so a (prompt, seed) pair always gives the same image whatever the
batch it is drawn in, and the same seed gives the same starting noise for every prompt.
torch, diffusers and PIL are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sepme_engine.errors import InvalidInput


def _image_seeds(prompts: Sequence[str], seeds: Sequence[int] | int, n: int) -> list[int]:
    """One seed per output image, prompt-major (image i*n + j is prompt i, sample j)."""
    if isinstance(seeds, int):
        return [seeds + j for _ in prompts for j in range(n)]
    seeds = [int(s) for s in seeds]
    if len(seeds) == n:
        return [seeds[j] for _ in prompts for j in range(n)]
    if len(seeds) == n * len(prompts):
        return seeds
    raise InvalidInput(
        f"got {len(seeds)} seeds for {len(prompts)} prompt(s) × {n} sample(s)",
        hint="pass one int, n seeds (one per sample index) or len(prompts)·n seeds",
    )


def _step_reporter(progress: Callable[[float], None], per_step: float) -> Any:
    """A diffusers `callback_on_step_end` that reports `per_step` images done each step."""

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> Any:
        progress(per_step)
        return kwargs

    return on_step


def sample_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int] | int = 0,
    n: int = 1,
    steps: int = 25,
    guidance: float = 7.5,
    device: str | None = None,
    batch_size: int = 64,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Generate `n` images per prompt: float32 array (len(prompts)·n, H, W, 3) in [0, 1].

    Row i*n + j is prompt i, sample j, drawn from a CPU generator seeded with `seed + j` (int
    `seeds`) or `seeds[j]`. Works with any diffusers StableDiffusionPipeline.
    `progress(k)` is called after each denoising step with the images completed since the last
    call (fractions of a batch), adding up to len(prompts)·n.
    """
    import torch

    prompts = list(prompts)
    if not prompts:
        raise InvalidInput("no prompts to sample", hint="give at least one prompt")
    if n < 1 or steps < 1:
        raise InvalidInput(f"n and steps must be ≥ 1 (got n={n}, steps={steps})")
    image_seeds = _image_seeds(prompts, seeds, n)
    flat = [p for p in prompts for _ in range(n)]
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    from sepme_engine._hflog import quiet_hf_logs

    # diffusers logs the cut-off words of a long prompt; `prompt_overflow` says it in sepme's words
    with torch.no_grad(), quiet_hf_logs():
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            extra: dict[str, Any] = {}
            if progress is not None:
                extra["callback_on_step_end"] = _step_reporter(progress, len(chunk) / steps)
            gens = [
                torch.Generator("cpu").manual_seed(s)
                for s in image_seeds[start : start + batch_size]
            ]
            res = pipe(
                prompt=chunk,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
                height=height,
                width=width,
                negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                **extra,
            )
            out.append(np.asarray(res.images, dtype=np.float32))
    return np.clip(np.concatenate(out), 0.0, 1.0)


def prompt_overflow(pipe: Any, prompts: Sequence[str]) -> list[tuple[str, int, int]]:
    """(prompt, tokens, limit) for each prompt longer than the text encoder reads (start and end
    tokens included): the pipeline truncates it, so its tail has no effect."""
    from sepme_engine._hflog import quiet_hf_logs

    tok = pipe.tokenizer
    limit = int(tok.model_max_length)
    found = []
    with quiet_hf_logs():
        for p in prompts:
            n = len(tok(p, truncation=False).input_ids)
            if n > limit:
                found.append((p, n, limit))
    return found


def image_grid(
    images: np.ndarray | Sequence[np.ndarray],
    rows: int,
    cols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: int | None = None,
    pad: int = 2,
) -> Any:
    """A labelled grid (PIL.Image) of `rows·cols` images (row-major), float [0, 1] or uint8.

    Small images are upscaled (nearest) to `cell` pixels (default: at least 96). Row labels are
    drawn on the left, column labels on top, with PIL's default font.
    """
    from PIL import Image, ImageDraw, ImageFont

    imgs = [np.asarray(im) for im in images]
    if len(imgs) != rows * cols:
        raise InvalidInput(f"image_grid: {len(imgs)} images for a {rows}×{cols} grid")
    if row_labels is not None and len(row_labels) != rows:
        raise InvalidInput(f"image_grid: {len(row_labels)} row labels for {rows} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise InvalidInput(f"image_grid: {len(col_labels)} column labels for {cols} columns")
    h, w = imgs[0].shape[:2]
    if cell is None:
        cell = max(w, 96)
    scale = max(1, round(cell / w))
    ch, cw = h * scale, w * scale
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(s: str) -> tuple[int, int]:
        box = probe.textbbox((0, 0), s, font=font)
        return int(box[2] - box[0]), int(box[3] - box[1])

    left = max((text_size(s)[0] for s in row_labels), default=0) + 8 if row_labels else 0
    top = max((text_size(s)[1] for s in col_labels), default=0) + 8 if col_labels else 0
    grid = Image.new(
        "RGB",
        (left + cols * (cw + pad) + pad, top + rows * (ch + pad) + pad),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        arr = im if im.dtype == np.uint8 else (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
        tile = Image.fromarray(arr[..., :3]).resize((cw, ch), Image.Resampling.NEAREST)
        grid.paste(tile, (left + pad + c * (cw + pad), top + pad + r * (ch + pad)))
    for r, label in enumerate(row_labels or []):
        _, th = text_size(label)
        draw.text(
            (4, top + pad + r * (ch + pad) + (ch - th) // 2), label, fill=(0, 0, 0), font=font
        )
    for c, label in enumerate(col_labels or []):
        tw, _ = text_size(label)
        draw.text(
            (left + pad + c * (cw + pad) + (cw - tw) // 2, 4), label, fill=(0, 0, 0), font=font
        )
    return grid


def save_grid(
    path: str | Path,
    images: np.ndarray | Sequence[np.ndarray],
    rows: int,
    cols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: int | None = None,
) -> Path:
    """Write `image_grid(...)` to `path` (format from the suffix, e.g. .png) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, rows, cols, row_labels, col_labels, cell).save(path)
    return path


__all__ = ["image_grid", "sample_images", "save_grid"]
