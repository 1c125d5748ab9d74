"""Shared by tests/faults (fast subset) and benchmarks/faults.py (the full run).

A *template store* (the toy base with one increment `circle`, a variant `v1` and a registered
base `b1`) is built once and copied for each case. A *bad input* is a command line (plus an
optional setup that plants something hostile); the bar for each: exit status ≠ 0, exactly one
line on stderr, no traceback, no file of the store changed, nothing outside the store touched,
no pickle payload executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# tiny settings: each erase in a subprocess takes seconds
FAST_CONFIG = "[erase.toy]\nimage_steps = 2\nbatch_size = 1\n"
FAST_ERASE = ["--steps", "2", "--images", "1"]


# -- store snapshots ----------------------------------------------------------------------------
def snapshot(root: Path, *, skip: tuple[str, ...] = ("cache", "store.lock")) -> dict[str, str]:
    """rel path -> sha256 of every regular file (and symlink target) under `root`."""
    out: dict[str, str] = {}
    root = Path(root)
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts and rel_dir.parts[0] in skip:
            dirnames[:] = []
            continue
        for d in list(dirnames):
            p = Path(dirpath) / d
            if p.is_symlink():
                out[str(rel_dir / d)] = "link:" + os.readlink(p)
        for name in filenames:
            rel = rel_dir / name
            if rel.parts[0] in skip:
                continue
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(rel)] = "link:" + os.readlink(p)
            else:
                out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def build_template(root: Path) -> Path:
    """The template store: toy + increment `circle` (active), variant `v1`, base `b1`."""
    from sepme_engine.compose import compose
    from sepme_engine.erase.run import erase
    from sepme_engine.store import Store

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(FAST_CONFIG, encoding="utf-8")
    store = Store(root)
    erase(store, ["circle"], overrides={"steps": 2, "images": 1})
    compose(store, name="v1")
    weights = root.parent / "b1-weights.safetensors"
    weights.write_bytes(b"not used")
    store.write_manifest("bases", "b1", base_manifest("b1", weights))
    return root


def base_manifest(name: str, link: Path) -> dict[str, Any]:
    """A well-typed manifest of a base registered by reference (no model behind it)."""
    return {
        "kind": "base",
        "name": name,
        "source_type": "single_file",
        "origin": str(link),
        "base_digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
        "size": 8,
        "format": "single_file",
        "file_format": "safetensors",
        "arch": "sd1",
        "profile": "sd1",
        "prediction_type": "epsilon",
        "text_width": 768,
        "tokenizer_max_length": 77,
        "cross_attn_layers": [],
        "created": "2026-01-01T00:00:00Z",
        "link": {"path": str(link), "size": 8, "mtime": 0.0},
        "link_files": {"model.safetensors": "sha256:" + "0" * 64},
    }


# -- hostile files ------------------------------------------------------------------------------
class _Payload:
    """Unpickling this writes a marker file (os.system would do worse)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.marker), "pwned"))


def payload_pickle(dest: Path, marker: Path) -> Path:
    dest.write_bytes(pickle.dumps({"state_dict": {"x": _Payload(str(marker))}}))
    return dest


def huge_header_safetensors(dest: Path) -> Path:
    dest.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    return dest


def bad_metadata_safetensors(dest: Path) -> Path:
    header = json.dumps(
        {"__metadata__": 5, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    )
    raw = header.encode()
    dest.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return dest


# -- cases --------------------------------------------------------------------------------------
@dataclass
class Ctx:
    root: Path  # the store
    outside: Path  # a folder outside the store, with sentinel files
    env: dict[str, str] = field(default_factory=dict)

    @property
    def marker(self) -> Path:
        return self.outside / "PWNED"


Setup = Callable[[Ctx], list[str] | None]  # may return the args (when they depend on paths)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    setup: Setup | None = None
    store_may_change: bool = False  # the case edits the store in setup only


def _corrupt(kind: str, key: str, edit: Callable[[dict[str, Any]], None]) -> Setup:
    def setup(ctx: Ctx) -> None:
        path = ctx.root / "manifests" / kind / f"{key}.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    return setup


def _symlink(rel: str) -> Setup:
    """Replace store folder `rel` with a symlink to a folder outside holding a victim file."""

    def setup(ctx: Ctx) -> None:
        target = ctx.outside / ("victim-" + rel.replace("/", "-"))
        target.mkdir(parents=True, exist_ok=True)
        (target / "precious.txt").write_text("keep me")
        (target / "b1.json").write_text("{}")
        link = ctx.root / rel
        if link.is_dir():
            shutil.rmtree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)

    return setup


def _home_is_file(ctx: Ctx) -> None:
    f = ctx.outside / "home-file"
    f.write_text("i am a file")
    ctx.env["SEPME_HOME"] = str(f)


def _evil_name(ctx: Ctx) -> list[str]:
    evil = ctx.outside / "evil"
    (ctx.outside / "evil.json").write_text('{"schema_version": 1}')
    return ["base", "rm", str(evil), "-y"]


def _file_arg(make: Callable[[Path], Path], name: str, *args: str) -> Setup:
    def setup(ctx: Ctx) -> list[str]:
        path = make(ctx.outside / name)
        return [a.replace("{F}", str(path)) for a in args]

    return setup


def _pickle_arg(*args: str) -> Setup:
    def setup(ctx: Ctx) -> list[str]:
        path = payload_pickle(ctx.outside / "model.ckpt", ctx.marker)
        return [a.replace("{F}", str(path)) for a in args]

    return setup


def _config(text: str) -> Setup:
    def setup(ctx: Ctx) -> None:
        (ctx.root / "config.toml").write_text(FAST_CONFIG + text, encoding="utf-8")

    return setup


BAD_INPUTS: tuple[Case, ...] = (
    # names and path traversal (item 4)
    Case("show-traversal-base", ("show", "../../bases/b1")),
    Case("rm-traversal-base", ("rm", "../../bases/b1", "-y")),
    Case("rm-traversal-variant", ("rm", "../../variants/toy/v1", "-y")),
    Case("base-show-traversal", ("base", "show", "../increments/toy/circle")),
    Case("list-base-traversal", ("list", "--base", "../increments/toy")),
    Case("export-variant-traversal", ("export", "{OUT}/x.safetensors", "--variant", "../../x")),
    Case("compose-name-traversal", ("compose", "--name", "../../bases/b1")),
    Case("compose-name-space", ("compose", "--name", "My Variant")),
    Case("show-unicode", ("show", "cœur-♥")),
    Case("show-control-chars", ("show", "a\x1b[31mred")),
    Case("show-too-long", ("show", "a" * 300)),
    Case("rm-empty-name", ("rm", "", "-y")),
    Case("erase-empty", ("erase", "")),
    Case("erase-blank", ("erase", "   ")),
    Case("base-add-upper", ("base", "add", "UPPER", "{OUT}/nothing")),
    Case("base-add-slash", ("base", "add", "a/b", "{OUT}/nothing")),
    # names and symlinks out of the store on delete (item 1)
    Case("base-rm-absolute-name", (), _evil_name),
    Case("base-use-absolute-name", ("base", "use", "{OUT}/evil")),
    Case("prune-symlinked-tmp", ("store", "prune"), _symlink("tmp"), True),
    Case("prune-symlinked-views", ("store", "prune"), _symlink("views"), True),
    Case(
        "base-rm-symlinked-increments",
        ("base", "rm", "b1", "-y"),
        _symlink("manifests/increments/b1"),
        True,
    ),
    # non-finite and out-of-range numbers (item 6)
    Case("erase-tau-nan", ("erase", "x", "--tau", "nan")),
    Case("erase-tau-inf", ("erase", "x", "--tau", "inf")),
    Case("erase-lr-nan", ("erase", "x", "--lr", "nan")),
    Case("erase-lr-zero", ("erase", "x", "--lr", "0")),
    Case("erase-lr-negative", ("erase", "x", "--lr", "-1")),
    Case("erase-beta-neg-inf", ("erase", "x", "--beta", "-inf")),
    Case("erase-lam-nan", ("erase", "x", "--lam", "nan")),
    Case("erase-steps-zero", ("erase", "x", "--steps", "0")),
    Case("erase-steps-1e30", ("erase", "x", "--steps", "1e30")),
    Case("erase-steps-huge-int", ("erase", "x", "--steps", "1" + "0" * 30)),
    Case("erase-images-zero", ("erase", "x", "--images", "0")),
    Case("erase-seed-negative", ("erase", "x", "--seed", "-5")),
    Case(
        "generate-guidance-nan",
        ("generate", "a red circle", "-o", "{OUT}/g.png", "--guidance", "nan"),
    ),
    Case("generate-steps-zero", ("generate", "a red circle", "-o", "{OUT}/g.png", "--steps", "0")),
    Case(
        "generate-steps-1e30", ("generate", "a red circle", "-o", "{OUT}/g.png", "--steps", "1e30")
    ),
    Case("generate-n-zero", ("generate", "a red circle", "-o", "{OUT}/g.png", "--n", "0")),
    Case("export-rank-zero", ("export", "{OUT}/l.safetensors", "--format", "lora", "--rank", "0")),
    Case("config-tau-nan", ("erase", "x"), _config("tau = nan\n"), True),
    Case("config-steps-zero", ("erase", "x"), _config("steps = 0\n"), True),
    Case("config-lr-inf", ("erase", "x"), _config("lr = inf\n"), True),
    Case("config-lr-string", ("erase", "x"), _config('lr = "fast"\n'), True),
    # huge input (item 8)
    Case("erase-prompt-10k", ("erase", "x", "--prompt", "a red circle " * 800)),
    # malformed manifests (item 5)
    Case(
        "manifest-size-string",
        ("export", "{OUT}/m.safetensors"),
        _corrupt("increments", "toy/circle", lambda d: d["blob"].update(size="12")),
        True,
    ),
    Case(
        "manifest-norm-string",
        ("list",),
        _corrupt("increments", "toy/circle", lambda d: d.update(norm="big")),
        True,
    ),
    Case(
        "manifest-active-not-list",
        ("list",),
        _corrupt("compositions", "toy", lambda d: d.update(active="circle")),
        True,
    ),
    Case(
        "manifest-blob-missing",
        ("show", "circle"),
        _corrupt("increments", "toy/circle", lambda d: d.pop("blob")),
        True,
    ),
    Case(
        "manifest-digest-traversal",
        ("export", "{OUT}/d.safetensors"),
        _corrupt(
            "increments",
            "toy/circle",
            lambda d: d["blob"].update(digest="sha256:../../../etc/passwd"),
        ),
        True,
    ),
    Case(
        "manifest-base-size-string",
        ("base", "list"),
        _corrupt("bases", "b1", lambda d: d.update(size="8")),
        True,
    ),
    Case(
        "manifest-variant-active-int",
        ("variants",),
        _corrupt("variants", "toy/v1", lambda d: d.update(active=5)),
        True,
    ),
    # the environment (item 8)
    Case("home-is-file-list", ("list",), _home_is_file),
    Case("home-is-file-verify", ("store", "verify"), _home_is_file),
    Case("home-is-file-export", ("export", "{OUT}/h.safetensors"), _home_is_file),
    # hostile model files (item 8)
    Case(
        "safetensors-huge-header",
        (),
        _file_arg(huge_header_safetensors, "huge.safetensors", "base", "add", "hh", "{F}"),
    ),
    Case(
        "safetensors-metadata-int",
        (),
        _file_arg(bad_metadata_safetensors, "meta.safetensors", "base", "add", "mm", "{F}"),
    ),
    Case("pickle-payload", (), _pickle_arg("base", "add", "pk", "{F}")),
    Case("pickle-payload-allowed", (), _pickle_arg("base", "add", "pk", "{F}", "--allow-pickle")),
    Case("base-add-missing-file", ("base", "add", "nf", "{OUT}/does-not-exist.safetensors")),
    Case(
        "base-add-empty-file",
        (),
        _file_arg(
            lambda p: (p.write_bytes(b""), p)[1], "empty.safetensors", "base", "add", "ef", "{F}"
        ),
    ),
)


def prepare(case: Case, template: Path, work: Path) -> tuple[Ctx, list[str]]:
    """Copy the template store into `work`, plant the case's setup; returns (ctx, argv)."""
    if work.exists():
        shutil.rmtree(work)
    root = work / "home"
    shutil.copytree(template, root, symlinks=True)
    outside = work / "outside"
    outside.mkdir(parents=True)
    (outside / "sentinel.txt").write_text("outside the store")
    ctx = Ctx(root, outside, {"SEPME_HOME": str(root)})
    args = list(case.args)
    if case.setup is not None:
        got = case.setup(ctx)
        if got is not None:
            args = got
    args = [a.replace("{OUT}", str(outside)) for a in args]
    return ctx, args


def judge(
    ctx: Ctx,
    rc: int,
    stdout: str,
    stderr: str,
    store_before: dict[str, str],
    outside_before: dict[str, str],
) -> list[str]:
    """What is wrong with a bad input's outcome (empty: it met the bar)."""
    wrong: list[str] = []
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc == 0:
        wrong.append("exit status 0")
    if "Traceback" in stderr + stdout:
        wrong.append("traceback")
    if len(lines) != 1:
        wrong.append(f"{len(lines)} lines on stderr")
    elif len(lines[0]) > 1000:
        wrong.append(f"a {len(lines[0])}-character line")
    if snapshot(ctx.root) != store_before:
        wrong.append("the store changed")
    if snapshot(ctx.outside) != outside_before:
        wrong.append("files outside the store changed")
    if ctx.marker.exists():
        wrong.append("a pickle payload ran")
    return wrong


def run_subprocess(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> tuple[int, str, str]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    full.pop("SEPME_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-m", "sepme_cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )
    return p.returncode, p.stdout, p.stderr
