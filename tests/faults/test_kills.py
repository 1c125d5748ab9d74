"""Kills in real processes (the fast subset; benchmarks/faults.py runs every point of every
mutating command): SIGKILL at an injected point of the write path (SEPME_FAULT_KILL_AT), then
`store verify`, the destination, and a rerun; SIGTERM during erase (item 10); two erases at
once (item 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sepme_engine.store import Store
from sepme_engine.store.maintenance import verify
from tests.faults.harness import FAST_ERASE, REPO, run_subprocess


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "home"
    shutil.copytree(template, root, symlinks=True)
    return root


def _problems(root: Path) -> list[str]:
    return sorted(p.kind for p in verify(Store(root)).problems)


def test_kill_before_a_variant_is_renamed_then_rerun(home: Path) -> None:
    env = {"SEPME_HOME": str(home), "SEPME_FAULT_KILL_AT": "manifest.before-rename:2"}
    rc, _, _ = run_subprocess(["compose", "--restore", "circle", "--name", "v2"], env)
    assert rc == -signal.SIGKILL
    folder = home / "manifests" / "variants" / "toy"
    assert not (folder / "v2.json").exists() and list(folder.glob(".v2.json.*.incomplete"))
    assert _problems(home) == ["leftover"]  # reported, nothing corrupt
    rc, _, err = run_subprocess(["compose", "--name", "v2"], {"SEPME_HOME": str(home)})
    assert rc == 0, err
    assert not list(folder.glob(".*.incomplete")) and _problems(home) == []


@pytest.mark.slow
def test_kill_mid_export_leaves_no_partial_output_and_rerun_cleans(
    home: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    env = {"SEPME_HOME": str(home), "SEPME_FAULT_KILL_AT": "export.mid-write"}
    rc, _, _ = run_subprocess(["export", str(dest / "pipe"), "--format", "diffusers"], env)
    assert rc == -signal.SIGKILL
    assert not (dest / "pipe").exists()
    stale = list(dest.glob(".pipe.*.incomplete"))
    assert len(stale) == 1
    rc, _, err = run_subprocess(
        ["export", str(dest / "pipe"), "--format", "diffusers"], {"SEPME_HOME": str(home)}
    )
    assert rc == 0, err
    assert "interrupted export" in err and not stale[0].exists()
    assert sorted(p.name for p in dest.iterdir()) == ["pipe"]
    assert _problems(home) == []


@pytest.mark.slow
def test_sigterm_during_erase_is_like_ctrl_c(home: Path) -> None:
    env = {**os.environ, "SEPME_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("SEPME_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sepme_cli", "erase", "blue", "--steps", "100000", "--images", "1"],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    latents = home / "cache" / "latents"
    while time.monotonic() < deadline and len(list(latents.glob("*.safetensors"))) < 2:
        time.sleep(0.2)  # circle's latents are in the template; blue's appear when training starts
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated: nothing half-written was kept"
    assert "Traceback" not in err
    assert not (home / "manifests" / "increments" / "toy" / "blue.json").exists()
    assert _problems(home) == []


@pytest.mark.slow
def test_two_erases_at_once_never_lose_each_other(home: Path) -> None:
    env = {**os.environ, "SEPME_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("SEPME_DEBUG", None)
    procs = {
        c: subprocess.Popen(
            [sys.executable, "-m", "sepme_cli", "erase", c, *FAST_ERASE, "--no-default-preserve"],
            env=env,
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in ("blue", "green")
    }
    results = {c: (p.wait(timeout=300), p.communicate()[1]) for c, p in procs.items()}
    saved = {}
    for c, (rc, err) in results.items():
        path = home / "manifests" / "increments" / "toy" / f"{c}.json"
        if rc == 0:
            saved[c] = json.loads(path.read_text())["preserve_prompts"]
        else:  # the loser is refused with one line, nothing stored
            assert rc == 1 and "error (conflict)" in err and not path.exists(), err
    assert saved, results
    if len(saved) == 2:  # both stored: the later one's E_k holds the earlier one
        assert "blue" in saved["green"] or "green" in saved["blue"], saved
    assert _problems(home) == []


@pytest.mark.slow
def test_file_size_limit_is_one_line_and_leaves_nothing(home: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    env = {**os.environ, "SEPME_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("SEPME_DEBUG", None)
    cmd = f"ulimit -f 64; exec {sys.executable} -m sepme_cli export {dest / 'm.safetensors'}"
    p = subprocess.run(["bash", "-c", cmd], env=env, cwd=str(REPO), capture_output=True, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1 and "EFBIG" in lines[0], p.stderr
    assert list(dest.iterdir()) == []
