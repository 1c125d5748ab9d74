"""The toy world's vocabulary: 4 shapes, 6 colours, 3 styles. No imports, so the store/config
side of sepme can name the toy concepts without loading numpy (`world` re-exports these)."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
STYLES: tuple[str, ...] = ("plain", "stripes", "checks")
CONCEPTS: tuple[str, ...] = SHAPES + COLOURS + STYLES
AXES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "style": STYLES}


def caption_parts(colour: str | None, shape: str | None, style: str | None) -> str:
    """A caption naming only the given parts: "a red circle", "a circle on stripes", "red", ""."""
    if shape is not None:
        if colour is not None:
            head = f"a {colour} {shape}"
        else:
            head = f"a {shape}" if style is not None else shape
    elif colour is not None:
        head = colour
    else:
        return style or ""
    return f"{head} on {style}" if style is not None else head


def captions() -> tuple[str, ...]:
    """Every non-blank caption the toy base was trained on (`caption_parts` of each colour, shape
    and style or none of it): 139, the full "a red circle on stripes" ones included. The toy
    profile's SepME `train_contexts` (erase/sepme.py: the iterations also train on the captions
    naming the concept), and a pool to try for the closed form's `contexts`."""
    out = []
    for colour in (None, *COLOURS):
        for shape in (None, *SHAPES):
            for style in (None, *STYLES):
                text = caption_parts(colour, shape, style)
                if text:
                    out.append(text)
    return tuple(out)
