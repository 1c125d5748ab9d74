"""A streaming safetensors writer: one tensor in memory at a time.

Format (https://github.com/huggingface/safetensors): a little-endian u64 N, an N-byte JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, padded
with spaces to a multiple of 8), then the tensors' bytes back to back in header order.

The header is computed from each tensor's declared dtype and shape before any data is produced;
then each entry's `make()` is called, its bytes written and the tensor released. `make()` may
return a floating tensor of another floating dtype than declared: the writer then casts it slice
by slice through a ring of three small reusable buffers (the same values as `.to(dtype)`, without
allocating a cast copy of the tensor), single-threaded. Each byte view is then written by one
background thread and, when the data is hashed, fed to SHA-256 by another, both at the same time
(file writes and hashlib release the GIL), while the caller produces/casts the next views: at
most `_WINDOW` bytes are in flight. Another shape, or a non-floating mismatch, is an error (the
header would lie).
"""

from __future__ import annotations

import ctypes
import errno
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
from typing import BinaryIO

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
_WINDOW = 256 * 1024 * 1024  # bytes put and not yet written + hashed (views of the model: free)


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
    """Cast slices through a small ring of reusable buffers per target dtype. A buffer is handed
    out again only once every consumer is done with the slice it held (`_Pipeline.put`'s
    `on_done`), so the next slices are cast while earlier ones are still written and hashed."""

    RING = 4

    def __init__(self) -> None:
        self._bufs: dict[torch.dtype, list[tuple[torch.Tensor, threading.Event]]] = {}
        self._next: dict[torch.dtype, int] = {}

    def buffer(self, dtype: torch.dtype) -> tuple[torch.Tensor, threading.Event]:
        """A free buffer and its event; set the event when the slice written into it is done."""
        if dtype not in self._bufs:
            self._bufs[dtype] = [
                (torch.empty(_CAST_ELEMS, dtype=dtype), _set(threading.Event()))
                for _ in range(self.RING)
            ]
            self._next[dtype] = 0
        i = self._next[dtype]
        self._next[dtype] = (i + 1) % self.RING
        buf, free = self._bufs[dtype][i]
        free.wait()
        free.clear()
        return buf, free


def _set(ev: threading.Event) -> threading.Event:
    ev.set()
    return ev


class _Chunk:
    """One byte view on its way through the consumers; `pending` counts those not done yet."""

    __slots__ = ("view", "nbytes", "pending", "on_done")

    def __init__(self, view: memoryview, pending: int, on_done: Callable[[], None] | None):
        self.view: memoryview | None = view
        self.nbytes = view.nbytes
        self.pending = pending
        self.on_done = on_done


class _Pipeline:
    """Hands each byte view, in order, to consumer threads that work on it at the same time: the
    file write and, when hashing, the SHA-256 (both release the GIL on large buffers), while the
    caller produces and casts the next views. At most `window` bytes are in flight (put and not
    yet done by every consumer); a view is released as soon as all are done with it. An error in
    a consumer is raised in the caller at the next `put` or at `close`; the consumers then skip
    the rest (nothing more is written)."""

    def __init__(self, consumers: Sequence[tuple[str, Callable[[memoryview], object]]]) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._error: BaseException | None = None
        self._queues: list[queue.SimpleQueue[_Chunk | None]] = []
        self._threads: list[threading.Thread] = []
        for name, fn in consumers:
            q: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
            t = threading.Thread(target=self._run, args=(q, fn), name=name, daemon=True)
            self._queues.append(q)
            self._threads.append(t)
            t.start()

    def _run(self, q: queue.SimpleQueue[_Chunk | None], fn: Callable[[memoryview], object]) -> None:
        while True:
            chunk = q.get()
            if chunk is None:
                return
            if self._error is None and chunk.view is not None:
                try:
                    fn(chunk.view)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    with self._cond:
                        self._error = self._error or exc
                        self._cond.notify_all()
            self._done(chunk)
            del chunk

    def _done(self, chunk: _Chunk) -> None:
        with self._cond:
            chunk.pending -= 1
            if chunk.pending:
                return
            chunk.view = None  # release the tensor behind it
            self._in_flight -= chunk.nbytes
            self._cond.notify_all()
        if chunk.on_done is not None:
            chunk.on_done()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, view: memoryview, on_done: Callable[[], None] | None = None) -> None:
        chunk = _Chunk(view, len(self._queues), on_done)
        with self._cond:
            while (
                self._error is None and self._in_flight and self._in_flight + chunk.nbytes > _WINDOW
            ):
                self._cond.wait()
            self._check()
            self._in_flight += chunk.nbytes
        for q in self._queues:
            q.put(chunk)

    def _stop(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()

    def close(self) -> None:
        """Wait for every queued view to be consumed; re-raise a consumer's error, if any."""
        self._stop()
        self._check()

    def abort(self) -> None:
        """Stop after the work in progress (used when the caller fails)."""
        with self._cond:
            self._error = self._error or RuntimeError("aborted")
            self._cond.notify_all()
        self._stop()


_FALLOC_FL_KEEP_SIZE = 0x01


def _linux_fallocate() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):  # pragma: no cover - a libc without fallocate
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def preallocate(f: BinaryIO, size: int) -> bool:
    """Reserve `size` bytes of disk blocks for the open file `f` before writing it (Linux
    `fallocate` with FALLOC_FL_KEEP_SIZE: the file's size still grows only as it is written, so a
    short write leaves no zeros behind). On ext4, writing a 2 GiB file into reserved blocks took
    0.84 s against 0.97 s (benchmarks/results/export.md); a full disk fails here, before any byte
    is written (OSError ENOSPC). Best effort otherwise: where the OS or the filesystem does not do
    it (not Linux; EOPNOTSUPP on some network filesystems) nothing happens and False is returned.
    glibc's `posix_fallocate` is not used: where the filesystem cannot reserve blocks it writes
    one byte per block instead, which would cost more than it saves."""
    fn = _FALLOCATE
    if fn is None or size <= 0:
        return False
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's BytesIO)
        return False
    if fn(fd, _FALLOC_FL_KEEP_SIZE, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        raise OSError(err, os.strerror(err), getattr(f, "name", None))
    return False


_FALLOCATE = _linux_fallocate()


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
    *,
    reserve: bool = False,
) -> int:
    """Write the whole safetensors stream to an open binary file; return the bytes written.

    With `hash_key`, the metadata value under that key is set to "0x" + the SHA-256 of all
    tensor bytes (the header excluded), patched into the header after the data is written
    (`f` must then be seekable). With `reserve`, the file's blocks are reserved first
    (`preallocate`; `f` must be a new, empty file).
    """
    meta = dict(metadata or {})
    placeholder = "0x" + uuid.uuid4().hex * 2  # 66 chars, as long as the final value
    if hash_key is not None:
        meta[hash_key] = placeholder
    head = build_header(entries, meta)
    if reserve:
        preallocate(f, len(head) + sum(e.nbytes for e in entries))
    f.write(head)
    written = len(head)
    hasher = hashlib.sha256() if hash_key is not None else None

    caster = _Caster()
    total = len(entries)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    consumers: list[tuple[str, Callable[[memoryview], object]]] = [("sepme-writer", f.write)]
    if hasher is not None:
        consumers.append(("sepme-sha256", hasher.update))
    pipe = _Pipeline(consumers)
    try:
        for i, e in enumerate(entries):
            t = e.make()
            _check_produced(e, t)
            flat = t.detach().to("cpu").contiguous().reshape(-1)
            del t
            n = flat.numel()
            if flat.dtype == e.dtype:
                view = _raw_bytes(flat)  # keeps `flat` alive until written and hashed
                for start in range(0, len(view), _CHUNK):
                    pipe.put(view[start : start + _CHUNK])
                del view
            else:
                for start in range(0, n, _CAST_ELEMS):
                    m = min(_CAST_ELEMS, n - start)
                    buf, free = caster.buffer(e.dtype)
                    buf[:m].copy_(flat[start : start + m])
                    pipe.put(_raw_bytes(buf[:m]), free.set)
            written += n * flat.new_empty((), dtype=e.dtype).element_size()
            del flat
            if progress is not None:
                progress(i + 1, total)
        pipe.close()
    except BaseException:
        pipe.abort()
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
            n = write_entries(f, entries, metadata, progress, hash_key, reserve=True)
            f.flush()
            os.fsync(f.fileno())
    return n


def write_plain_file(path: Path, data: bytes) -> None:
    """Write a small file (config, JSON) durably; used inside temporary folders."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
