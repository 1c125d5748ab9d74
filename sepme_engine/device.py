"""Device and dtype choice: `auto` = cuda, then mps, then cpu; frozen weights bf16 on GPU."""

from __future__ import annotations

from typing import Any

from sepme_engine.errors import InvalidInput
from sepme_engine.models.arch import DTYPES, resolve_device

__all__ = ["resolve_device", "resolve_dtype"]

DTYPE_NAMES = DTYPES  # short name -> torch dtype name (the one table, models/arch.py)


def resolve_dtype(name: str, device: Any) -> str:
    """The frozen weights' dtype name ("float32" | "float16" | "bfloat16") for `device`."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPE_NAMES:
        raise InvalidInput(f"unknown dtype {name!r}", hint="use auto, fp32, fp16 or bf16")
    if device.type == "cpu" and name != "fp32":
        raise InvalidInput(
            f"{name} weights are for GPUs; on the CPU use fp32",
            hint="use fp32",
            kind="cpu-dtype",
        )
    return DTYPE_NAMES[name]
