"""A streaming safetensors writer: one tensor in memory at a time.

Format (https://github.com/huggingface/safetensors): a little-endian u64 N, an N-byte JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, padded
with spaces to a multiple of 8), then the tensors' bytes back to back in header order.

The header is computed from each tensor's declared dtype and shape before any data is produced;
then each entry's `make()` is called, its bytes written and the tensor released. `make()` may
return a floating tensor of another floating dtype than declared: the writer then casts it slice
by slice through a ring of three small reusable buffers (the same values as `.to(dtype)`, without
allocating a cast copy of the tensor), single-threaded. The bytes are written by a background
thread, so producing/casting the next slice overlaps the write of the previous one. Another
shape, or a non-floating mismatch, is an error (the header would lie).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
_CAST_ELEMS = 1 << 22  # elements cast per slice (8 MiB of fp16): cache-sized


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


def constant(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A `make` for a tensor that already exists."""
    return lambda: t


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
    return arr.reshape(-1).view("u1").data


class _Caster:
    """Cast slices through a small ring of reusable buffers per target dtype: while the writer
    thread writes one slice, the next is cast into another buffer."""

    RING = 3  # one being written, one queued, one being filled

    def __init__(self) -> None:
        self._bufs: dict[torch.dtype, list[torch.Tensor]] = {}
        self._next: dict[torch.dtype, int] = {}

    def buffer(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._bufs:
            self._bufs[dtype] = [torch.empty(_CAST_ELEMS, dtype=dtype) for _ in range(self.RING)]
            self._next[dtype] = 0
        i = self._next[dtype]
        self._next[dtype] = (i + 1) % self.RING
        return self._bufs[dtype][i]


class _Writer:
    """Writes byte views on a background thread (file writes release the GIL), so producing and
    casting the next tensor overlaps the I/O of the previous one. At most `depth` views wait in
    the queue; an error in the thread is raised in the caller at the next `put` or at `close`."""

    def __init__(self, f: BinaryIO, hasher: Any | None, depth: int = 1) -> None:
        self._f, self._hasher = f, hasher
        self._q: queue.Queue[memoryview | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sepme-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            view = self._q.get()
            if view is None:
                return
            if self._error is not None:
                continue  # drain after a failure
            try:
                self._f.write(view)
                if self._hasher is not None:
                    self._hasher.update(view)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self._error = exc
            del view  # release the tensor behind it before waiting for the next one

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, view: memoryview) -> None:
        self._check()
        self._q.put(view)

    def close(self) -> None:
        """Wait for every queued write; re-raise the thread's error, if any."""
        self._q.put(None)
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop after the write in progress (used when the caller fails)."""
        self._error = self._error or RuntimeError("aborted")
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._q.put(None)
        self._thread.join()


def _check_produced(e: TensorEntry, t: torch.Tensor) -> None:
    ok_dtype = t.dtype == e.dtype or (t.is_floating_point() and e.dtype.is_floating_point)
    if not ok_dtype or tuple(t.shape) != tuple(e.shape):
        raise ValueError(
            f"{e.name}: produced {t.dtype} {tuple(t.shape)}, declared {e.dtype} {e.shape}"
        )


def write_entries(
    f: BinaryIO,
    entries: Sequence[TensorEntry],
    metadata: Mapping[str, str] | None,
    progress: Callable[[int, int], None] | None = None,
    hash_key: str | None = None,
) -> int:
    """Write the whole safetensors stream to an open binary file; return the bytes written.

    With `hash_key`, the metadata value under that key is set to "0x" + the SHA-256 of all
    tensor bytes (the header excluded), patched into the header after the data is written
    (`f` must then be seekable).
    """
    meta = dict(metadata or {})
    placeholder = "0x" + uuid.uuid4().hex * 2  # 66 chars, as long as the final value
    if hash_key is not None:
        meta[hash_key] = placeholder
    head = build_header(entries, meta)
    f.write(head)
    written = len(head)
    hasher = hashlib.sha256() if hash_key is not None else None

    caster = _Caster()
    total = len(entries)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # the hash runs here, not in the writer thread: hashing the next slice overlaps the write
    writer = _Writer(f, None)

    def put(view: memoryview) -> None:
        if hasher is not None:
            hasher.update(view)  # releases the GIL on large buffers
        writer.put(view)

    try:
        for i, e in enumerate(entries):
            t = e.make()
            _check_produced(e, t)
            flat = t.detach().to("cpu").contiguous().reshape(-1)
            del t
            n = flat.numel()
            if flat.dtype == e.dtype:
                view = _raw_bytes(flat)  # keeps `flat` alive until written
                for start in range(0, len(view), _CHUNK):
                    put(view[start : start + _CHUNK])
                del view
            else:
                for start in range(0, n, _CAST_ELEMS):
                    m = min(_CAST_ELEMS, n - start)
                    buf = caster.buffer(e.dtype)
                    buf[:m].copy_(flat[start : start + m])
                    put(_raw_bytes(buf[:m]))
            written += n * flat.new_empty((), dtype=e.dtype).element_size()
            del flat
            if progress is not None:
                progress(i + 1, total)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        torch.set_num_threads(threads)
    if hasher is not None:
        at = head.find(placeholder.encode())
        assert at > 0
        end = f.tell()
        f.seek(at)
        f.write(("0x" + hasher.hexdigest()).encode())
        f.seek(end)
    return written


def write_safetensors(
    path: Path,
    entries: Sequence[TensorEntry],
    metadata: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    hash_key: str | None = None,
) -> int:
    """Stream `entries` into a safetensors file at `path`, atomically; return bytes written.

    Raises AlreadyExists when `path` exists and not `force`. On any exception nothing is left
    behind (the temporary `.<name>.*.incomplete` is removed). `hash_key`: see `write_entries`.
    """
    with atomic_file(Path(path), force=force) as tmp:
        with open(tmp, "xb", buffering=1024 * 1024) as f:
            n = write_entries(f, entries, metadata, progress, hash_key)
            f.flush()
            os.fsync(f.fileno())
    return n


def write_plain_file(path: Path, data: bytes) -> None:
    """Write a small file (config, JSON) durably; used inside temporary folders."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
