"""The export report, export dtypes, peak-memory tracking and the delta/weight fit check."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sepme_engine.errors import BaseMismatch, InvalidInput
from sepme_engine.models.arch import DTYPES, dtype_name, torch_dtype

# The export precisions: the dtype table's short names (`models.arch.DTYPES`) as torch dtypes.
EXPORT_DTYPES: dict[str, torch.dtype] = {name: torch_dtype(name) for name in DTYPES}


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    `peak_rss_bytes` is the process's peak resident memory (ru_maxrss) when the export ended;
    `rss_increase_bytes` is how much the export raised that peak (0: it stayed below an earlier
    peak). For `format == "lora"`, `rank` is the largest per-layer rank written and
    `relative_error` / `max_layer_relative_error` are ||ΔW - up·down||_F / ||ΔW||_F over all
    layers together / for the worst layer (after the cast to `dtype`).
    """

    path: Path
    format: str  # "ldm" | "diffusers" | "lora"
    dtype: str  # "fp16" | "bf16" | "fp32"
    n_tensors: int
    bytes_written: int
    wall_s: float
    peak_rss_bytes: int
    rss_increase_bytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    rank: int | None = None
    relative_error: float | None = None
    max_layer_relative_error: float | None = None
    layer_ranks: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """What `sepme export --json` prints (the metadata and per-layer ranks are left out)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "dtype": self.dtype,
            "n_tensors": self.n_tensors,
            "bytes_written": self.bytes_written,
            "wall_s": self.wall_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "rank": self.rank,
            "relative_error": self.relative_error,
            "max_layer_relative_error": self.max_layer_relative_error,
        }


def parse_dtype(dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    """("fp16", torch.float16) from "fp16"/"float16"/torch.float16 (also bf16, fp32)."""
    try:
        name = dtype_name(dtype)
    except InvalidInput:
        raise InvalidInput(
            f"unsupported export dtype {dtype!r}", hint="use fp16, bf16 or fp32"
        ) from None
    return name, EXPORT_DTYPES[name]


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss), in bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class Meter:
    """Wall time and peak-RSS rise of a block of work."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.rss0 = peak_rss_bytes()

    def done(self) -> tuple[float, int, int]:
        peak = peak_rss_bytes()
        return time.perf_counter() - self.t0, peak, max(0, peak - self.rss0)


def check_deltas(
    deltas: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map module-name deltas to `state` weight keys (name + ".weight"), checking they fit."""
    out: dict[str, torch.Tensor] = {}
    for name, d in deltas.items():
        key = name + ".weight"
        if key not in state:
            raise BaseMismatch(
                f"delta for {name!r}: the UNet has no weight {key!r}",
                hint="the increments belong to another base",
                kind="export",
            )
        if tuple(d.shape) != tuple(state[key].shape):
            raise BaseMismatch(
                f"delta for {name!r} has shape {tuple(d.shape)}, the weight is {tuple(state[key].shape)}",
                hint="the increments belong to another base",
                kind="export",
            )
        if not torch.isfinite(d).all():
            raise InvalidInput(f"delta for {name!r} is not finite", hint="re-run the erasure")
        out[key] = d
    return out
