"""Read a safetensors header without torch (fast, for detection, listing and verification)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from sepme_engine.errors import CorruptEntry

MAX_HEADER = 100 * 1024 * 1024
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (tensors: name -> {dtype, shape, data_offsets}, metadata) and check the file's size.

    Raises CorruptEntry for a truncated or malformed file.
    """
    path = Path(path)
    size = path.stat().st_size
    hint = "the file is damaged or incomplete; copy or download it again"
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CorruptEntry(f"{path} is not a safetensors file (too short)", hint=hint)
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or n + 8 > size:
            raise CorruptEntry(
                f"{path} is not a valid safetensors file (bad header size)", hint=hint
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptEntry(
                f"{path} has a malformed safetensors header: {exc}", hint=hint
            ) from exc
    if not isinstance(header, dict):
        raise CorruptEntry(f"{path} has a malformed safetensors header", hint=hint)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptEntry(
            f"{path} has a malformed safetensors header: __metadata__ must map strings to strings",
            hint=hint,
        )
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
                raise ValueError("bad offsets")
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            if stop - begin != count * DTYPE_SIZES.get(info["dtype"], 1):
                raise ValueError("size mismatch")
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptEntry(f"{path}: tensor {name!r} has a malformed entry", hint=hint) from exc
        end = max(end, stop)
    if 8 + n + end > size:
        raise CorruptEntry(
            f"{path} is truncated: header promises {8 + n + end} bytes, file has {size}", hint=hint
        )
    return header, dict(metadata)
