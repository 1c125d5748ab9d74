"""A streaming safetensors writer: one tensor in memory at a time.

Format (https://github.com/huggingface/safetensors): a little-endian u64 N, an N-byte JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, padded
with spaces to a multiple of 8), then the tensors' bytes back to back in header order.

The header is computed from each tensor's declared dtype and shape before any data is produced;
then each entry's `make()` is called, its bytes written and the tensor released. A `make()` that
returns another shape or dtype than declared is an error (the header would lie).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sepme_engine.export._atomic import atomic_file

ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

_ALIGN = 8
_CHUNK = 64 * 1024 * 1024  # write big tensors in slices: bounded syscalls, responsive to ^C


@dataclass(frozen=True)
class TensorEntry:
    """One tensor to write: its name, declared dtype and shape, and how to produce it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def build_header(entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length prefix plus the padded JSON header for `entries` written in order."""
    header: dict[str, object] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"safetensors metadata must be str -> str, got {k!r}: {v!r}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for e in entries:
        if e.dtype not in ST_DTYPES:
            raise TypeError(f"{e.name}: dtype {e.dtype} cannot be stored in safetensors")
        if e.name in header or e.name == "__metadata__":
            raise ValueError(f"duplicate tensor name {e.name!r}")
        end = offset + e.nbytes
        header[e.name] = {
            "dtype": ST_DTYPES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    return len(raw).to_bytes(8, "little") + raw


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy little-endian byte view of a contiguous CPU tensor."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    arr = t.numpy()
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is LE
        arr = arr.byteswap()
    return memoryview(arr).cast("B")


def write_entries(
    f: object,
    entries: Sequence[TensorEntry],
    metadata: Mapping[str, str] | None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the whole safetensors stream to an open binary file; return the bytes written."""
    write = f.write  # type: ignore[attr-defined]
    head = build_header(entries, metadata)
    write(head)
    written = len(head)
    total = len(entries)
    for i, e in enumerate(entries):
        t = e.make()
        if t.dtype != e.dtype or tuple(t.shape) != tuple(e.shape):
            raise ValueError(
                f"{e.name}: produced {t.dtype} {tuple(t.shape)}, declared {e.dtype} {e.shape}"
            )
        t = t.detach().to("cpu").contiguous()
        view = _raw_bytes(t)
        if len(view) != e.nbytes:  # pragma: no cover - guarded by the shape/dtype check
            raise ValueError(f"{e.name}: {len(view)} bytes, expected {e.nbytes}")
        for start in range(0, len(view), _CHUNK):
            write(view[start : start + _CHUNK])
        written += len(view)
        del t, view
        if progress is not None:
            progress(i + 1, total)
    return written


def write_safetensors(
    path: Path,
    entries: Sequence[TensorEntry],
    metadata: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Stream `entries` into a safetensors file at `path`, atomically; return bytes written.

    Raises AlreadyExists when `path` exists and not `force`. On any exception nothing is left
    behind (the temporary `.<name>.*.incomplete` is removed).
    """
    with atomic_file(Path(path), force=force) as tmp:
        with open(tmp, "xb", buffering=1024 * 1024) as f:
            n = write_entries(f, entries, metadata, progress)
            f.flush()
            os.fsync(f.fileno())
    return n


def write_plain_file(path: Path, data: bytes) -> None:
    """Write a small file (config, JSON) durably; used inside temporary folders."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
