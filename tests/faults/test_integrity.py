"""Items 2, 3, 5, 7, 8, 9 of the reliability issue, in-process on a copy of the template store."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine import errors as E
from sepme_engine.store import Store
from sepme_engine.store.maintenance import verify
from tests.faults.harness import snapshot

runner = CliRunner()
DEAD_PID = 2**22 + 12345  # above the default pid_max: no such process


@pytest.fixture
def home(template: Path, sepme_home: Path) -> Path:
    shutil.copytree(template, sepme_home, symlinks=True)
    return sepme_home


def _one_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def _flip_data_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40  # inside the tensor data; the header stays intact
    st = path.stat()
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime kept


# -- item 2: concurrent erases -----------------------------------------------------------------
def test_erase_refuses_when_the_increments_changed_under_it(home: Path) -> None:
    from sepme_engine.bases import get_base
    from sepme_engine.increments import get_increment, load_increment, save_increment, store_view

    store = Store(home)
    base = get_base(store, "toy")
    view = store_view(store, "toy", exclude={"green"})  # what erase green read before training
    inc = load_increment(store, get_increment(store, "toy", "circle"), base)
    data = store.read_manifest("increments", "toy/circle")
    store.write_manifest("increments", "toy/blue", {**data, "concept": "blue", "prompt": "blue"})
    before = snapshot(home)
    with pytest.raises(E.Conflict, match="blue"):
        save_increment(
            store, base, "green", inc, prompt="green", method="sepme", m_k=1, iterations=1,
            stop_reason="cap", preserve_prompts=[], settings={}, stats={}, expect=view,
        )  # fmt: skip
    assert snapshot(home) == before  # nothing written
    save_increment(  # an up-to-date view saves
        store, base, "green", inc, prompt="green", method="sepme", m_k=1, iterations=1,
        stop_reason="cap", preserve_prompts=[], settings={}, stats={},
        expect=store_view(store, "toy", exclude={"green"}),
    )  # fmt: skip
    assert store.has_manifest("increments", "toy/green")


# -- item 9: a base removed under a running erase; orphans -------------------------------------
def test_base_removed_under_erase_discards_and_verify_reports_orphans(home: Path) -> None:
    from sepme_engine.bases import remove_base
    from sepme_engine.increments import store_view

    store = Store(home)
    view = store_view(store, "b1", exclude={"blue"})
    remove_base(store, "b1")
    with pytest.raises(E.Conflict, match="removed"):
        view.check(store)
    data = store.read_manifest("increments", "toy/circle")
    store.write_manifest("increments", "gone/circle", {**data, "base": "gone"})
    store.write_manifest("compositions", "gone", {"base": "gone", "active": ["circle"]})
    kinds = sorted(p.kind for p in verify(store).problems)
    assert kinds == ["orphan", "orphan"]


# -- item 3: corrupt blobs are never served ----------------------------------------------------
def test_export_refuses_a_corrupt_increment_blob(home: Path, tmp_path: Path) -> None:
    store = Store(home)
    blob = store.read_manifest("increments", "toy/circle")["blob"]["digest"]
    _flip_data_byte(store.blob_path(blob))
    out = tmp_path / "out.safetensors"
    line = _one_line(runner.invoke(app, ["export", str(out)]))
    assert blob in line and "sepme store verify" in line
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "sepme-home"]


def test_base_blob_rehashed_when_its_size_or_mtime_changed(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"w" * 4096)
    ref = store.put_blob_file(src)
    assert store.check_blob(ref) == store.blob_path(ref)  # recorded when stored: no re-hash
    path = store.blob_path(ref)
    path.write_bytes(b"x" + b"w" * 4095)  # same size, new mtime
    with pytest.raises(E.CorruptEntry, match=ref.digest):
        store.check_blob(ref)


# -- item 5: typed manifests, reported by verify ------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "key", "field", "value"),
    [
        ("increments", "toy/circle", "norm", "big"),
        ("increments", "toy/circle", "iterations", "3"),
        ("compositions", "toy", "active", "circle"),
        ("variants", "toy/v1", "active", {"a": 1}),
        ("bases", "b1", "size", "8"),
    ],
)
def test_verify_reports_a_mistyped_field(
    home: Path, kind: str, key: str, field: str, value
) -> None:
    path = home / "manifests" / kind / f"{key}.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    problems = [p for p in verify(Store(home)).problems if p.kind == "bad-manifest"]
    assert (
        len(problems) == 1 and repr(field) in problems[0].detail and str(path) in problems[0].detail
    )


def test_verify_reports_a_missing_blob_key(home: Path) -> None:
    path = home / "manifests" / "increments" / "toy" / "circle.json"
    data = json.loads(path.read_text())
    del data["blob"]
    path.write_text(json.dumps(data))
    res = runner.invoke(app, ["store", "verify", "--json"])
    assert res.exit_code == 1
    kinds = [p["kind"] for p in json.loads(res.stdout)["problems"]]
    assert "bad-manifest" in kinds


# -- item 7: temporaries at the destination and in the store ----------------------------------
def test_export_cleans_its_stale_temporaries_and_says_so(home: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    stale = dest / f".pipe.{DEAD_PID}.0badc0de.incomplete"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "half.safetensors").write_bytes(b"half")
    live = dest / f".pipe.{os.getpid()}.0badc0de.incomplete"  # a running export's: kept
    live.mkdir()
    foreign = dest / ".pipe.notours.incomplete"  # no pid: not recognisably ours, kept
    foreign.write_text("x")
    res = runner.invoke(app, ["export", str(dest / "pipe"), "--format", "diffusers"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and live.exists() and foreign.exists()
    assert str(stale) in res.stderr and "interrupted export" in res.stderr
    assert (dest / "pipe" / "model_index.json").is_file()


def test_compose_name_cleans_a_killed_runs_incomplete(home: Path) -> None:
    folder = home / "manifests" / "variants" / "toy"
    stale = folder / f".v2.json.{DEAD_PID}.abc123.incomplete"
    stale.write_text('{"half')
    res = runner.invoke(app, ["compose", "--name", "v2"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and (folder / "v2.json").is_file()
    assert verify(Store(home)).ok


# -- item 8: environment errors ----------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EACCES])
def test_io_errors_are_one_line(home: Path, tmp_path: Path, monkeypatch, code: int) -> None:
    import sepme_engine.store.atomic as atomic

    def fail(*_a, **_k):
        raise OSError(code, os.strerror(code), str(home / "manifests"))

    monkeypatch.setattr(atomic.os, "fsync", fail)
    before = snapshot(home)
    line = _one_line(runner.invoke(app, ["compose", "--name", "v3"]))
    assert line.startswith(f"error (I/O {errno.errorcode[code]})")
    assert snapshot(home) == before


def test_concurrent_base_add_of_one_name_refuses_the_second(
    store: Store, tmp_path: Path, monkeypatch
) -> None:
    from sepme_engine import bases
    from tests._fixtures import save_diffusers, tiny
    from tests.faults.harness import base_manifest

    folder = save_diffusers(tiny("sd1", max_length=8), tmp_path / "pipe")
    real = bases.inspect_source

    def other_process_finishes_first(*a, **k):
        got = real(*a, **k)
        store.write_manifest("bases", "dup", base_manifest("dup", tmp_path / "elsewhere"))
        return got

    monkeypatch.setattr(bases, "inspect_source", other_process_finishes_first)
    with pytest.raises(E.AlreadyExists, match="meanwhile"):
        bases.add_base(store, "dup", str(folder))
    assert store.read_manifest("bases", "dup")["origin"] == str(tmp_path / "elsewhere")


def test_pickled_diffusers_base_added_with_allow_pickle_is_usable(
    store: Store, tmp_path: Path
) -> None:
    from tests._fixtures import tiny

    folder = tmp_path / "pipe"
    tiny("sd1", max_length=8).save_pretrained(str(folder), safe_serialization=False)
    assert list(folder.glob("unet/*.bin"))
    res = runner.invoke(app, ["base", "add", "pk", str(folder)])
    assert res.exit_code == 1 and "pickle" in res.stderr
    res = runner.invoke(app, ["base", "add", "pk", str(folder), "--allow-pickle"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "pk.safetensors"
    res = runner.invoke(app, ["export", str(out), "--base", "pk"])
    assert res.exit_code == 0, res.output
    assert out.is_file()
