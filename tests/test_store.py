from __future__ import annotations

import json
from pathlib import Path

import pytest

from sepme_engine.errors import CorruptEntry, InvalidName, NotFound, SchemaTooNew, StoreLocked
from sepme_engine.safetensors_header import read_header
from sepme_engine.store import SCHEMA_VERSION, Store, validate_name
from sepme_engine.store.atomic import atomic_open, write_json
from sepme_engine.store.maintenance import prune, verify


def test_blob_is_content_addressed_and_idempotent(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(b"hello sepme" * 1000)
    a = store.put_blob_file(src)
    b = store.put_blob_file(src)
    assert a == b
    assert a.size == 11000
    assert store.blob_path(a).read_bytes() == src.read_bytes()
    assert store.blob_path(a).name == "sha256-" + a.hex
    assert list(store.tmp_dir.iterdir()) == []


def base_manifest(name: str) -> dict:
    """A well-typed base manifest (the typed loader rejects anything less)."""
    return {
        "kind": "base",
        "name": name,
        "source_type": "single_file",
        "origin": "/nowhere",
        "base_digest": "sha256:" + "0" * 64,
        "size": 0,
        "arch": "sd1",
        "prediction_type": "epsilon",
        "text_width": 768,
        "tokenizer_max_length": 77,
        "cross_attn_layers": [],
        "created": "2026-01-01T00:00:00Z",
        "files": {},
    }


def increment_manifest(base: str, concept: str, blob: dict) -> dict:
    return {
        "kind": "increment",
        "base": base,
        "concept": concept,
        "prompt": concept,
        "method": "sepme",
        "base_digest": "sha256:" + "0" * 64,
        "blob": blob,
        "created": "2026-01-01T00:00:00Z",
    }


def test_manifest_roundtrip_and_schema(store: Store) -> None:
    store.write_manifest("bases", "one", base_manifest("one"))
    data = store.read_manifest("bases", "one")
    assert data["schema_version"] == SCHEMA_VERSION and data["name"] == "one"
    assert store.list_manifests("bases") == ["one"]
    path = store.manifest_path("bases", "one")
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(SchemaTooNew, match="newer sepme"):
        store.read_manifest("bases", "one")
    path.write_text("{not json")
    with pytest.raises(CorruptEntry):
        store.read_manifest("bases", "one")
    with pytest.raises(NotFound):
        store.read_manifest("bases", "two")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(dest) as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert json.loads(dest.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize(
    "name", ["a/b", "..", "a..b", "with space", "tab\tname", "Upper", "", "-x"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


def test_invalid_name_suggests_a_slug() -> None:
    with pytest.raises(InvalidName) as exc:
        validate_name("Van Gogh")
    assert exc.value.hint is not None and "'van-gogh'" in exc.value.hint


def test_lock_times_out_with_store_locked(sepme_home: Path) -> None:
    from filelock import FileLock

    sepme_home.mkdir(parents=True)
    holder = FileLock(str(sepme_home / "store.lock"))
    holder.acquire()
    try:
        store = Store(sepme_home, lock_timeout=0.3)
        waited: list[str] = []
        store.on_lock_wait = waited.append
        with pytest.raises(StoreLocked), store.locked():
            pass
        assert waited and "waiting" in waited[0]
    finally:
        holder.release()


def test_lock_waits_then_proceeds(sepme_home: Path) -> None:
    import subprocess
    import sys
    import time

    sepme_home.mkdir(parents=True)
    ready = sepme_home / "held"
    code = (
        "import sys, time; from filelock import FileLock; "
        "l = FileLock(sys.argv[1]); l.acquire(); open(sys.argv[2], 'w').close(); "
        "time.sleep(1.0); l.release()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(sepme_home / "store.lock"), str(ready)]
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        store = Store(sepme_home, lock_timeout=20)
        waited: list[str] = []
        store.on_lock_wait = waited.append
        store.write_manifest("bases", "x", base_manifest("x"))
        assert waited and store.has_manifest("bases", "x")
    finally:
        proc.wait(timeout=30)


def test_lock_is_one_per_store_and_nests_across_store_objects(sepme_home: Path) -> None:
    """Two Store objects of one root share the lock: nesting them does not wait on ourselves,
    and while the outer one holds it another process is refused."""
    import subprocess
    import sys

    outer = Store(sepme_home, lock_timeout=0.5)
    inner = Store(Path(str(sepme_home) + "/"), lock_timeout=0.5)
    probe = (
        "import sys; from filelock import FileLock, Timeout\n"
        "try:\n    FileLock(sys.argv[1]).acquire(timeout=0.3)\nexcept Timeout:\n    sys.exit(3)\n"
    )
    lock_file = str(sepme_home / "store.lock")
    with outer.locked():
        with inner.locked(), outer.locked():  # would raise StoreLocked with one lock per object
            inner.write_manifest("bases", "x", base_manifest("x"))
        refused = subprocess.run([sys.executable, "-c", probe, lock_file], timeout=60)
        assert refused.returncode == 3  # still held by the outer block
    free = subprocess.run([sys.executable, "-c", probe, lock_file], timeout=60)
    assert free.returncode == 0  # released when the outermost block ends
    assert outer.has_manifest("bases", "x")


def test_verify_and_prune(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"a" * 100)
    kept = store.put_blob_file(src)
    src.write_bytes(b"b" * 100)
    orphan = store.put_blob_file(src)
    store.write_manifest("increments", "toy/x", increment_manifest("toy", "x", kept.to_dict()))
    assert verify(store).ok
    (store.tmp_dir / "blob.123.incomplete").write_bytes(b"half")
    store.blob_path(kept).write_bytes(b"c" * 100)  # corrupt it
    report = verify(store)
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["corrupt-blob", "leftover"]
    dry = prune(store, dry_run=True)
    assert any(orphan.hex in p for p in dry.removed) and store.blob_path(orphan).exists()
    done = prune(store)
    assert not store.blob_path(orphan).exists()
    assert store.blob_path(kept).exists()
    assert not any(store.tmp_dir.iterdir())
    assert set(done.removed) == set(dry.removed)
    store.blob_path(kept).unlink()
    assert [p.kind for p in verify(store).problems] == ["missing-blob"]


def test_read_header_detects_truncation(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path), metadata={"k": "v"})
    header, meta = read_header(path)
    assert header["w"]["shape"] == [64, 64] and meta == {"k": "v"}
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptEntry, match="truncated"):
        read_header(path)
    path.write_bytes(b"\x05\x00")
    with pytest.raises(CorruptEntry):
        read_header(path)


def test_atomic_write_is_complete_or_absent(tmp_path: Path) -> None:
    """The one atomic-write helper: a file lands whole; a failure leaves the old content and no
    temporary; a content-addressed write may drop its temporary; a folder replaces a folder."""
    from sepme_engine.store.atomic import atomic_write

    dest = tmp_path / "out" / "f.bin"
    with atomic_write(dest) as staged:
        assert staged.path.parent == dest.parent and staged.path.name.startswith(".f.bin.")
        assert staged.path.name.endswith(".incomplete") and not staged.path.exists()
        staged.path.write_bytes(b"one")
    assert dest.read_bytes() == b"one"
    with pytest.raises(RuntimeError), atomic_write(dest) as staged:
        staged.path.write_bytes(b"half")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"one"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]

    scratch = tmp_path / "tmp"
    with atomic_write(None, folder=scratch, prefix="blob") as staged:
        staged.path.write_bytes(b"one")
        staged.dest = dest
        staged.keep_existing = True  # dest already holds it: the temporary is dropped
    assert list(scratch.iterdir()) == [] and dest.read_bytes() == b"one"

    folder = tmp_path / "dir"
    for content in (b"a", b"b"):
        with atomic_write(folder, directory=True) as staged:
            assert staged.path.is_dir()
            (staged.path / "x").write_bytes(content)
    assert (folder / "x").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "out", "tmp"]
