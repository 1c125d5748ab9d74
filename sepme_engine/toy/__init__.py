"""The toy world and the trained toy base shipped with sepme.

A tiny Stable Diffusion (diffusers pipeline folder in `weights/`) trained from scratch on 32×32
images of one coloured shape on a grey background, with 13 concepts: 4 shapes, 6 colours,
3 styles. It lets erasure be tested and benchmarked on CPU with an analytic judge.

This module is light: no torch import. Heavy parts live in submodules (`world`, `judge`, `train`,
`evaluate`, `tokenizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepme_engine.toy.vocab import AXES, COLOURS, CONCEPTS, SHAPES, STYLES

# default sampling settings of the shipped base
TOY_SAMPLER = "ddim"  # the scheduler saved with the pipeline (DDIM, trailing timesteps)
TOY_STEPS = 25
TOY_GUIDANCE = 4.0
TOY_MAX_LENGTH = 8  # tokenizer model_max_length (L); text width d = 128
TOY_TEXT_WIDTH = 128

_WEIGHTS = Path(__file__).parent / "weights"


def toy_pipeline_path() -> Path:
    """Folder of the shipped toy base (a diffusers StableDiffusionPipeline folder)."""
    if not (_WEIGHTS / "model_index.json").is_file():
        from sepme_engine.errors import NotFound

        raise NotFound(
            f"the toy base weights are missing from {_WEIGHTS}",
            hint="reinstall sepme, or train them: python -m sepme_engine.toy.train --out DIR",
        )
    return _WEIGHTS


def load_toy_pipeline(path: Path | None = None, device: str | None = None) -> Any:
    """Load the toy base (float32, progress bar off) offline."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path or toy_pipeline_path()),
        local_files_only=True,
        dtype=torch.float32,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe = pipe.to(device)
    return pipe


__all__ = [
    "AXES",
    "COLOURS",
    "CONCEPTS",
    "SHAPES",
    "STYLES",
    "TOY_GUIDANCE",
    "TOY_MAX_LENGTH",
    "TOY_SAMPLER",
    "TOY_STEPS",
    "TOY_TEXT_WIDTH",
    "load_toy_pipeline",
    "toy_pipeline_path",
]
