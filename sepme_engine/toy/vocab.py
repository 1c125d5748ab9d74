"""The toy world's vocabulary: 4 shapes, 6 colours, 3 styles. No imports, so the store/config
side of sepme can name the toy concepts without loading numpy (`world` re-exports these)."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
STYLES: tuple[str, ...] = ("plain", "stripes", "checks")
CONCEPTS: tuple[str, ...] = SHAPES + COLOURS + STYLES
AXES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "style": STYLES}
