"""An analytic judge of toy images: which colour, shape and style an image shows.

No learned weights; deterministic; numpy only. It works on a (32, 32, 3) float image in [0, 1]:

* shape mask — the background is grey and every shape colour is saturated, so the soft mask is
  the per-pixel saturation (max − min channel) normalised by the shape's own saturation;
* colour — the mask-weighted mean colour, grey removed (minus its min channel) and normalised,
  nearest of the six reference chromaticities;
* shape — template matching: the mask's bounding box gives centre and half-extent (every toy
  shape's box is centre ± half-extent); each of the four shapes is rendered over a small grid of
  centres and sizes around it and the one with the least mean absolute mask error wins;
* style — on background pixels (mask dilated by 2 px), the mean absolute grey difference at lags
  2 and 4 vertically and horizontally: horizontal stripes vary only vertically, checks vary both
  ways, plain varies neither (beyond noise). Phase-invariant, so shifted or broken patterns in
  generated images still count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from sepme_engine.toy.world import COLOUR_RGB, COLOURS, SHAPES, SIZE, shape_sdf

SAT_FLOOR = 0.08  # saturation below this is background (noise, grey)
PATTERN_MIN = 0.06  # mean |Δgrey| a pattern must exceed to count as stripes/checks


@dataclass(frozen=True)
class Verdict:
    colour: str
    shape: str
    style: str

    def get(self, axis: str) -> str:
        return str(getattr(self, axis))


def _chroma(rgb: np.ndarray) -> np.ndarray:
    c = rgb - rgb.min(axis=-1, keepdims=True)
    return c / np.maximum(c.max(axis=-1, keepdims=True), 1e-6)


_REF_CHROMA = _chroma(np.array([COLOUR_RGB[c] for c in COLOURS]))

# template offsets: centre shifts and half-extent deltas (pixels)
_OFF = np.array([-0.5, 0.0, 0.5])
_DR = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
_GY, _GX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
_OX, _OY = (o.reshape(1, -1, 1, 1) for o in np.meshgrid(_OFF, _OFF))
_TX, _TY = _GX[None, None] - _OX, _GY[None, None] - _OY  # (1, 9, H, W) shifted grids


def soft_mask(img: np.ndarray) -> np.ndarray:
    """(H, W) soft shape mask in [0, 1] from saturation."""
    sat = img.max(axis=-1) - img.min(axis=-1)
    strong = sat[sat > 0.25]
    ref = float(np.percentile(strong, 75)) if strong.size >= 4 else float(sat.max())
    ref = max(ref, SAT_FLOOR + 0.05)
    return np.clip((sat - SAT_FLOOR) / (ref - SAT_FLOOR), 0.0, 1.0)


def judge_colour(img: np.ndarray, mask: np.ndarray) -> str:
    w = np.where(mask > 0.5, mask, 0.0)
    if w.sum() < 1e-6:
        w = mask + 1e-9
    rgb = (img * w[..., None]).sum(axis=(0, 1)) / w.sum()
    d = ((_REF_CHROMA - _chroma(rgb)[None, :]) ** 2).sum(axis=1)
    return COLOURS[int(np.argmin(d))]


def _bbox(mask: np.ndarray) -> tuple[float, float, float]:
    m = mask > 0.5
    xs = np.nonzero(m.sum(axis=0) >= 1)[0]
    ys = np.nonzero(m.sum(axis=1) >= 1)[0]
    if xs.size == 0 or ys.size == 0:
        return SIZE / 2, SIZE / 2, SIZE * 0.29
    x0, x1 = float(xs[0]), float(xs[-1] + 1)
    y0, y1 = float(ys[0]), float(ys[-1] + 1)
    r = max(x1 - x0, y1 - y0) / 2
    return (x0 + x1) / 2, (y0 + y1) / 2, r


def judge_shape(mask: np.ndarray) -> str:
    cx, cy, r = _bbox(mask)
    rr = np.maximum(r + _DR, 1.0).reshape(-1, 1, 1, 1)  # (5, 1, 1, 1)
    errs = []
    for shape in SHAPES:
        cov = np.clip(0.5 - shape_sdf(shape, cx, cy, rr, _TX, _TY), 0.0, 1.0)  # (5, 9, H, W)
        errs.append(float(np.abs(cov - mask).mean(axis=(2, 3)).min()))
    return SHAPES[int(np.argmin(errs))]


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        p = np.pad(out, 1)
        out = np.maximum.reduce(
            [p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
            + [p[:-2, :-2], p[:-2, 2:], p[2:, :-2], p[2:, 2:]]
        )
    return out


def _lag_diff(grey: np.ndarray, bg: np.ndarray, lag: int, axis: int) -> float:
    if axis == 0:
        a, b = grey[lag:], grey[:-lag]
        ma, mb = bg[lag:], bg[:-lag]
    else:
        a, b = grey[:, lag:], grey[:, :-lag]
        ma, mb = bg[:, lag:], bg[:, :-lag]
    both = ma & mb
    if both.sum() < 8:
        return 0.0
    return float(np.abs(a - b)[both].mean())


def style_stats(img: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean |Δgrey| over background pixel pairs at lags 2 and 4, vertical (v) and horizontal (h)."""
    grey = img.mean(axis=-1)
    bg = _dilate((mask > 0.2).astype(np.float64), 2) < 0.5
    return {
        "v2": _lag_diff(grey, bg, 2, 0),
        "h2": _lag_diff(grey, bg, 2, 1),
        "v4": _lag_diff(grey, bg, 4, 0),
        "h4": _lag_diff(grey, bg, 4, 1),
    }


def judge_style(img: np.ndarray, mask: np.ndarray) -> str:
    s = style_stats(img, mask)
    vert = max(s["v2"], s["v4"])
    horiz = max(s["h2"], s["h4"])
    if max(vert, horiz) < PATTERN_MIN:
        return "plain"
    if horiz > 0.5 * vert:
        return "checks"
    return "stripes"


def _as_image(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.shape != (SIZE, SIZE, 3):
        raise ValueError(f"judge expects a ({SIZE}, {SIZE}, 3) image, got {a.shape}")
    return a


def judge(img: np.ndarray) -> Verdict:
    """Classify one (32, 32, 3) float image in [0, 1]."""
    a = _as_image(img)
    mask = soft_mask(a)
    return Verdict(
        colour=judge_colour(a, mask), shape=judge_shape(mask), style=judge_style(a, mask)
    )


def judge_batch(images: np.ndarray | Iterable[np.ndarray]) -> list[Verdict]:
    """Classify a batch (N, 32, 32, 3)."""
    return [judge(im) for im in images]


__all__ = ["Verdict", "judge", "judge_batch", "soft_mask", "style_stats"]
