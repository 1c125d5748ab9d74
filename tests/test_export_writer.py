"""The streaming safetensors writer and the complete-or-absent output helpers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sepme_engine.errors import AlreadyExists, InvalidInput
from sepme_engine.export._atomic import atomic_dir
from sepme_engine.export.safetensors_writer import (
    TensorEntry,
    build_header,
    constant,
    write_entries,
    write_safetensors,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.f16": torch.randn(7, generator=g).half(),
        "c.bf16": torch.randn(2, 2, 3, generator=g).bfloat16(),
        "d.i64": torch.arange(6).reshape(2, 3),
        "e.bool": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(4.0),
        "g.empty": torch.zeros(0, 4),
        "h.u8": torch.arange(5, dtype=torch.uint8),
    }


def _entries(ts: dict[str, torch.Tensor]) -> list[TensorEntry]:
    return [TensorEntry(k, v.dtype, tuple(v.shape), constant(v)) for k, v in ts.items()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_through_safetensors(tmp_path: Path) -> None:
    ts = _tensors()
    meta = {"sepme.version": "0.1.0", "note": "ünïcode ✓"}
    out = tmp_path / "x.safetensors"
    n = write_safetensors(out, _entries(ts), meta)
    assert n == out.stat().st_size
    back = load_file(str(out))
    assert set(back) == set(ts)
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == meta
    raw = out.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0
    header = json.loads(raw[8 : 8 + header_len])
    assert header["a.f32"]["dtype"] == "F32" and header["c.bf16"]["dtype"] == "BF16"
    # data laid out back to back in entry order
    assert header["a.f32"]["data_offsets"] == [0, 60]
    assert header["b.f16"]["data_offsets"] == [60, 74]
    assert _leftovers(tmp_path) == ["x.safetensors"]


def test_sha256_is_patched_into_the_header(tmp_path: Path) -> None:
    out = tmp_path / "h.safetensors"
    write_safetensors(out, _entries(_tensors()), {"k": "v"}, hash_key="modelspec.hash_sha256")
    raw = out.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    expected = "0x" + hashlib.sha256(raw[8 + header_len :]).hexdigest()
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["modelspec.hash_sha256"] == expected


def test_produced_tensors_alive_are_bounded_by_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sepme_engine.export.safetensors_writer as writer

    # a window of one tensor's bytes: while tensor i + 1 is made, only tensor i may still be
    # written / hashed; the made tensors are released once both are done with them
    monkeypatch.setattr(writer, "_WINDOW", 256 * 256 * 4)
    alive: list[weakref.ref[torch.Tensor]] = []
    peak = 0

    def make(i: int) -> torch.Tensor:
        nonlocal peak
        t = torch.full((256, 256), float(i))
        alive.append(weakref.ref(t))
        peak = max(peak, sum(r() is not None for r in alive))
        return t

    entries = [
        TensorEntry(f"t{i}", torch.float32, (256, 256), lambda i=i: make(i)) for i in range(6)
    ]
    write_safetensors(tmp_path / "s.safetensors", entries, hash_key="h")
    assert peak <= 2
    assert all(r() is None for r in alive)


def _golden_entries() -> list[TensorEntry]:
    a = torch.arange(3 * 5 * 7, dtype=torch.float32).reshape(15, 7) / 7 - 3
    return [
        TensorEntry("a.f32", torch.float32, (15, 7), constant(a)),
        TensorEntry("a.as_f16", torch.float16, (15, 7), constant(a * 1000)),
        TensorEntry("a.as_bf16", torch.bfloat16, (7, 15), constant(a.T)),
        TensorEntry("b.f16", torch.float16, (33,), constant(torch.linspace(-2, 2, 33).half())),
        TensorEntry("c.i64", torch.int64, (2, 3), constant(torch.arange(6).reshape(2, 3))),
        TensorEntry("d.bool", torch.bool, (3,), constant(torch.tensor([True, False, True]))),
        TensorEntry("e.empty", torch.float16, (0, 4), constant(torch.zeros(0, 4))),
    ]


# sha256 of the whole file the writer of sepme 0.6 (hash in the main thread, one writer
# thread) wrote for `_golden_entries()`: the pipelined writer must keep every byte
@pytest.mark.parametrize("small", [False, True])
def test_file_bytes_equal_the_previous_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool
) -> None:
    import sepme_engine.export.safetensors_writer as writer

    if small:  # many slices and chunks in flight at once, ragged last ones
        monkeypatch.setattr(writer, "_CAST_ELEMS", 5)
        monkeypatch.setattr(writer, "_CHUNK", 64)
        monkeypatch.setattr(writer, "_WINDOW", 200)
    out = tmp_path / "g.safetensors"
    write_safetensors(out, _golden_entries(), {"k": "v"}, hash_key="modelspec.hash_sha256")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == "8bc82a54fa390145f73bcc3f7fcc00f85f82bdd6fef67fd1be67635c7b7eee33"


class _SlowFile(io.BytesIO):
    """Writes that take a while, so casting runs ahead of them and must wait for a free buffer."""

    def write(self, b: Any) -> int:
        time.sleep(0.002)
        return super().write(b)


def test_cast_buffers_are_not_reused_while_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    import sepme_engine.export.safetensors_writer as writer

    monkeypatch.setattr(writer, "_CAST_ELEMS", 16)
    g = torch.Generator().manual_seed(3)
    src = {f"w{i}": torch.randn(40 + i, generator=g) for i in range(6)}
    entries = [TensorEntry(k, torch.float16, tuple(v.shape), constant(v)) for k, v in src.items()]
    f = _SlowFile()
    write_entries(f, entries, None, hash_key="modelspec.hash_sha256")
    raw = f.getvalue()
    n = int.from_bytes(raw[:8], "little")
    data = raw[8 + n :]
    expected = b"".join(v.half().numpy().tobytes() for v in src.values())
    assert data == expected
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(expected).hexdigest()


class _FailingFile(io.BytesIO):
    """A file whose third write fails as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, b: Any) -> int:
        self.calls += 1
        if self.calls == 3:
            raise OSError(28, "No space left on device")
        return super().write(b)


def test_an_error_in_the_writer_thread_reaches_the_caller() -> None:
    ts = _tensors()
    f = _FailingFile()
    with pytest.raises(OSError, match="No space left"):
        write_entries(f, _entries(ts), None)
    assert f.calls == 3  # nothing was written after the failure
    assert not any(t.name == "sepme-writer" for t in threading.enumerate())


def test_header_is_computed_before_any_tensor_is_made() -> None:
    def boom() -> torch.Tensor:
        raise AssertionError("made while building the header")

    head = build_header([TensorEntry("w", torch.float16, (4, 3), boom)], {"a": "b"})
    assert int.from_bytes(head[:8], "little") == len(head) - 8
    assert json.loads(head[8:])["w"] == {"dtype": "F16", "shape": [4, 3], "data_offsets": [0, 24]}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cast_by_slices_equals_to_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    import sepme_engine.export.safetensors_writer as writer

    monkeypatch.setattr(writer, "_CAST_ELEMS", 7)  # many slices, a ragged last one
    g = torch.Generator().manual_seed(1)
    src = {
        "a": torch.randn(5, 9, generator=g) * 1e3,
        "b": torch.randn(3, generator=g, dtype=torch.float64),
        "c": torch.randn(4, 4, generator=g).half(),
        "t": torch.randn(6, 4, generator=g).T,  # not contiguous
    }
    entries = [TensorEntry(k, dtype, tuple(v.shape), constant(v)) for k, v in src.items()]
    threads = torch.get_num_threads()
    write_safetensors(tmp_path / "c.safetensors", entries)
    assert torch.get_num_threads() == threads
    back = load_file(str(tmp_path / "c.safetensors"))
    for k, v in src.items():
        assert back[k].dtype == dtype and torch.equal(back[k], v.to(dtype)), k


def test_non_floating_dtype_mismatch_is_an_error(tmp_path: Path) -> None:
    entries = [TensorEntry("i", torch.float16, (3,), constant(torch.arange(3)))]
    with pytest.raises(ValueError, match="declared"):
        write_safetensors(tmp_path / "i.safetensors", entries)
    assert _leftovers(tmp_path) == []


def test_wrong_shape_from_make_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    entries = [TensorEntry("w", torch.float32, (2, 2), constant(torch.zeros(3)))]
    with pytest.raises(ValueError, match="declared"):
        write_safetensors(tmp_path / "bad.safetensors", entries)
    assert _leftovers(tmp_path) == []


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_safetensors(tmp_path / "m.safetensors", [], {"n": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_partial_file(tmp_path: Path, exc: BaseException) -> None:
    ts = _tensors()
    entries = _entries(ts)

    def fail() -> torch.Tensor:
        raise exc

    entries.insert(4, TensorEntry("boom", torch.float32, (2,), fail))
    with pytest.raises(type(exc)):
        write_safetensors(tmp_path / "p.safetensors", entries)
    assert _leftovers(tmp_path) == []


def test_failure_in_fsync_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "keep.safetensors"
    write_safetensors(out, _entries({"old": torch.ones(3)}))
    before = out.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O"):
        write_safetensors(out, _entries({"new": torch.zeros(3)}), force=True)
    assert out.read_bytes() == before
    assert _leftovers(tmp_path) == ["keep.safetensors"]


def test_existing_file_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    write_safetensors(out, _entries({"a": torch.ones(2)}))
    with pytest.raises(AlreadyExists) as info:
        write_safetensors(out, _entries({"b": torch.ones(2)}))
    assert (info.value.kind, info.value.path) == ("output", str(out))  # the CLI names --force
    assert set(load_file(str(out))) == {"a"}
    write_safetensors(out, _entries({"b": torch.ones(2)}), force=True)
    assert set(load_file(str(out))) == {"b"}
    assert _leftovers(tmp_path) == ["f.safetensors"]


def test_a_folder_is_not_replaced_by_a_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidInput):
        write_safetensors(tmp_path / "d", _entries({"a": torch.ones(1)}), force=True)


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "pipe"
    with atomic_dir(dest, force=False) as tmp:
        (tmp / "one.txt").write_text("1")
    assert _leftovers(dest) == ["one.txt"]
    with pytest.raises(AlreadyExists):
        with atomic_dir(dest, force=False):
            pass
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(dest, force=True) as tmp:
            (tmp / "two.txt").write_text("2")
            raise KeyboardInterrupt
    assert _leftovers(dest) == ["one.txt"]
    assert _leftovers(tmp_path) == ["pipe"]
    with atomic_dir(dest, force=True) as tmp:
        (tmp / "two.txt").write_text("2")
    assert _leftovers(dest) == ["two.txt"]
    assert _leftovers(tmp_path) == ["pipe"]


def _fake_fallocate(calls: list[tuple[int, int, int]], err: int) -> Any:
    import ctypes

    def fake(fd: int, mode: int, offset: int, size: int) -> int:
        calls.append((mode, offset, size))
        if err:
            ctypes.set_errno(err)
            return -1
        return 0

    return fake


def test_the_file_is_reserved_at_its_exact_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sepme_engine.export import safetensors_writer as sw

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sw, "_FALLOCATE", _fake_fallocate(calls, 0))
    out = tmp_path / "r.safetensors"
    n = write_safetensors(out, _entries(_tensors()), {"k": "v"})
    assert calls == [(sw._FALLOC_FL_KEEP_SIZE, 0, n)] and n == out.stat().st_size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate is Linux's")
def test_the_real_reservation_leaves_the_bytes_unchanged(tmp_path: Path) -> None:
    from sepme_engine.export import safetensors_writer as sw

    plain = io.BytesIO()
    write_entries(plain, _entries(_tensors()), {"k": "v"})
    out = tmp_path / "real.safetensors"
    with open(out, "xb") as f:
        reserved = sw.preallocate(f, len(plain.getvalue()) + 4096)  # more than is written
        n = write_entries(f, _entries(_tensors()), {"k": "v"})
    # KEEP_SIZE: the file is as long as what was written, never padded with the reserve
    assert out.read_bytes() == plain.getvalue() and n == out.stat().st_size
    assert isinstance(reserved, bool)


def test_a_full_disk_fails_before_any_byte_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from sepme_engine.export import safetensors_writer as sw

    made: list[str] = []

    def tracked(name: str, t: torch.Tensor) -> Any:
        def make() -> torch.Tensor:
            made.append(name)
            return t

        return make

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sw, "_FALLOCATE", _fake_fallocate(calls, errno.ENOSPC))
    entries = [
        TensorEntry(k, v.dtype, tuple(v.shape), tracked(k, v)) for k, v in _tensors().items()
    ]
    with pytest.raises(OSError) as info:
        write_safetensors(tmp_path / "full.safetensors", entries)
    assert info.value.errno == errno.ENOSPC and len(calls) == 1
    assert made == [] and _leftovers(tmp_path) == []


def test_a_filesystem_without_fallocate_is_written_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from sepme_engine.export import safetensors_writer as sw

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sw, "_FALLOCATE", _fake_fallocate(calls, errno.EOPNOTSUPP))
    out = tmp_path / "nfs.safetensors"
    write_safetensors(out, _entries(_tensors()))
    back = load_file(str(out))
    assert len(calls) == 1 and all(torch.equal(back[k], v) for k, v in _tensors().items())
