"""The toy world: 32×32 RGB images of one coloured shape on a grey, patterned background.

Everything here is numpy-only and deterministic for a given `numpy.random.Generator`.

* style (background, unsaturated grey level g ∈ [0.05, 0.35]):
  `plain` uniform g; `stripes` horizontal stripes, 2 px of g then 2 px of g + 0.25; `checks` a
  checkerboard of 4×4 px cells of g and g + 0.25. The pattern's phase (offset in rows and
  columns) is random, so the data is translation-invariant, as a convolutional model prefers; the
  judge is phase-invariant.
* shape (one per image, half-extent 22–36 % of the canvas, fully inside, anti-aliased):
  `circle`, `square`, `triangle` (apex up, base as wide as it is tall), `cross` (a plus sign
  whose arms are 40 % of its extent wide). Every shape's bounding box is centre ± half-extent.
* colour: one of six saturated colours times a brightness factor U[0.85, 1].
* Gaussian pixel noise σ = 0.02, then clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sepme_engine.toy.vocab import AXES, COLOURS, CONCEPTS, SHAPES, STYLES, caption_parts

SIZE = 32

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.9),
    "cyan": (0.1, 0.85, 0.9),
}
GREY_RANGE = (0.05, 0.35)
PATTERN_STEP = 0.25
EXTENT_RANGE = (0.22, 0.36)  # half-extent as a fraction of the canvas
BRIGHTNESS_RANGE = (0.85, 1.0)
CROSS_ARM = 0.4  # arm width as a fraction of the full extent (2 × half-extent)
NOISE_SIGMA = 0.02


def axis_of(concept: str) -> str:
    """The axis ("colour", "shape" or "style") a concept belongs to."""
    for axis, values in AXES.items():
        if concept in values:
            return axis
    raise KeyError(f"unknown toy concept {concept!r}; expected one of {', '.join(CONCEPTS)}")


@dataclass(frozen=True)
class Scene:
    """The latent variables of one toy image."""

    shape: str
    colour: str
    style: str
    cx: float  # centre, in pixels (continuous coordinates, pixel i covers [i, i+1))
    cy: float
    r: float  # half-extent in pixels
    brightness: float
    grey: float
    oy: int = 0  # pattern phase: row offset (0-7)
    ox: int = 0  # pattern phase: column offset (0-7)

    def caption(self) -> str:
        return full_caption(self.colour, self.shape, self.style)


def full_caption(colour: str, shape: str, style: str) -> str:
    return f"a {colour} {shape} on {style}"


def random_caption(scene: Scene, rng: np.random.Generator, p_empty: float = 0.1) -> str:
    """Training caption: the full caption ~half the time, parts dropped at random otherwise,
    and the empty caption with probability `p_empty` (for classifier-free guidance)."""
    u = rng.random()
    if u < p_empty:
        return ""
    if u < p_empty + 0.45:
        return scene.caption()
    while True:
        keep = rng.random(3) < 0.5
        if keep.any():
            break
    return caption_parts(
        scene.colour if keep[0] else None,
        scene.shape if keep[1] else None,
        scene.style if keep[2] else None,
    )


def random_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    style: str | None = None,
) -> Scene:
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour or COLOURS[int(rng.integers(len(COLOURS)))]
    style = style or STYLES[int(rng.integers(len(STYLES)))]
    r = float(rng.uniform(*EXTENT_RANGE)) * SIZE
    cx = float(rng.uniform(r, SIZE - r))
    cy = float(rng.uniform(r, SIZE - r))
    return Scene(
        shape=shape,
        colour=colour,
        style=style,
        cx=cx,
        cy=cy,
        r=r,
        brightness=float(rng.uniform(*BRIGHTNESS_RANGE)),
        grey=float(rng.uniform(*GREY_RANGE)),
        oy=int(rng.integers(8)),
        ox=int(rng.integers(8)),
    )


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5


def _box_sd(
    dx: np.ndarray, dy: np.ndarray, hx: float | np.ndarray, hy: float | np.ndarray
) -> np.ndarray:
    qx = np.abs(dx) - hx
    qy = np.abs(dy) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside


def shape_sdf(
    shape: str,
    cx: float,
    cy: float,
    r: float | np.ndarray,
    xx: np.ndarray | None = None,
    yy: np.ndarray | None = None,
) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape, evaluated at pixel centres."""
    xx = _XX if xx is None else xx
    yy = _YY if yy is None else yy
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return _box_sd(dx, dy, r, r)
    if shape == "cross":
        arm = CROSS_ARM * r  # half-width of an arm: 0.4 × (2r) / 2
        return np.minimum(_box_sd(dx, dy, r, arm), _box_sd(dx, dy, arm, r))
    if shape == "triangle":
        # apex (0, -r), base corners (±r, r); y grows downwards
        base = dy - r
        n = np.hypot(2.0, 1.0)
        right = (2.0 * dx - dy - r) / n
        left = (-2.0 * dx - dy - r) / n
        return np.maximum(base, np.maximum(left, right))
    raise KeyError(f"unknown shape {shape!r}")


def coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape on the 32×32 grid."""
    return np.clip(0.5 - shape_sdf(shape, cx, cy, r), 0.0, 1.0)


def background(style: str, grey: float, oy: int = 0, ox: int = 0) -> np.ndarray:
    """The (H, W) grey background of a style; (oy, ox) shift the pattern's phase."""
    y = np.arange(SIZE)[:, None] + oy
    x = np.arange(SIZE)[None, :] + ox
    if style == "plain":
        hi = np.zeros((SIZE, SIZE), dtype=bool)
    elif style == "stripes":
        hi = np.broadcast_to((y // 2) % 2 == 1, (SIZE, SIZE))
    elif style == "checks":
        hi = ((y // 4) + (x // 4)) % 2 == 1
    else:
        raise KeyError(f"unknown style {style!r}")
    return grey + PATTERN_STEP * hi.astype(np.float64)


def render(scene: Scene, rng: np.random.Generator | None = None, noise: bool = True) -> np.ndarray:
    """Render a scene to a (32, 32, 3) float32 image in [0, 1]."""
    bg = background(scene.style, scene.grey, scene.oy, scene.ox)[..., None]
    col = np.asarray(COLOUR_RGB[scene.colour]) * scene.brightness
    a = coverage(scene.shape, scene.cx, scene.cy, scene.r)[..., None]
    img = bg * (1.0 - a) + col[None, None, :] * a
    if noise:
        gen = rng if rng is not None else np.random.default_rng()
        img = img + gen.normal(0.0, NOISE_SIGMA, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def sample_batch(
    rng: np.random.Generator,
    n: int,
    p_empty: float = 0.1,
    shape_p: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` random scenes: images (n, 32, 32, 3) float32 in [0, 1], training captions, scenes.

    `shape_p`: sampling probabilities of SHAPES (uniform when None) — a training-time knob to
    give a hard shape more examples; the world itself is unchanged.
    """
    if shape_p is None:
        scenes = [random_scene(rng) for _ in range(n)]
    else:
        p = np.asarray(shape_p, dtype=np.float64)
        if p.shape != (len(SHAPES),) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"shape_p needs {len(SHAPES)} non-negative weights, got {shape_p}")
        picks = rng.choice(len(SHAPES), size=n, p=p / p.sum())
        scenes = [random_scene(rng, shape=SHAPES[int(k)]) for k in picks]
    images = np.stack([render(s, rng) for s in scenes])
    captions = [random_caption(s, rng, p_empty) for s in scenes]
    return images, captions, scenes


__all__ = [
    "AXES",
    "COLOURS",
    "COLOUR_RGB",
    "CONCEPTS",
    "SHAPES",
    "SIZE",
    "STYLES",
    "Scene",
    "axis_of",
    "background",
    "caption_parts",
    "coverage",
    "full_caption",
    "random_caption",
    "random_scene",
    "render",
    "sample_batch",
    "shape_sdf",
]
