"""Fault-injection run: kills, concurrent writers, corruptions and bad inputs, on real processes.

Every case starts from a copy of a template store (the toy base with increment `circle`, variant
`v1`; a tiny SD 1.x pipeline stored as base `tiny`; a base `b1` registered by reference with
two increments of its own) and runs `python -m sepme_cli` with tiny settings.

* kills: SIGKILL at every named point of every mutating command's write path
  (SEPME_FAULT_KILL_AT, see sepme_engine/store/faults.py) and at random times; then
  `store verify` (anything but a leftover temporary is a corrupt store), the destination (a
  file at the final name must be complete), a rerun of the command (must succeed), and
  `store verify` + the destination folder again (no stale temporary may remain);
* two concurrent writers of every kind: erase ×2, compose ×2 on the same variant, export during
  `rm`, `base add` ×2 of one name, erase during `base rm`;
* corruptions: a flipped bit in an increment blob's data (mtime kept), in a base blob (mtime
  kept), a truncated blob, a missing blob: export must refuse (0 corrupt blobs served);
* the bad-input table of tests/faults/harness.py (≥ 40 cases), each in its own process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/faults.py [--random 3] [--seed 0]

Writes benchmarks/results/faults.md and faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.harness import (  # noqa: E402
    BAD_INPUTS,
    FAST_ERASE,
    build_template,
    judge,
    prepare,
    snapshot,
)

RESULTS = REPO / "benchmarks" / "results"
DEAD_PID = 2**22 + 12345  # above the default pid_max: no such process


# -- processes ------------------------------------------------------------------------------------
def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "SEPME_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("SEPME_DEBUG", None)
    env.pop("SEPME_FAULT_KILL_AT", None)
    env.update(extra or {})
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sepme_cli", *args],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str, str]:
    p = start(args, env)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


# -- checks ---------------------------------------------------------------------------------------
def store_problems(home: Path) -> list[str]:
    from sepme_engine.store import Store
    from sepme_engine.store.maintenance import verify

    return [f"{p.kind}:{Path(p.path).name}" for p in verify(Store(home)).problems]


def corrupt(problems: list[str]) -> list[str]:
    return [p for p in problems if not p.startswith("leftover:")]


def partial_at_final_name(dest: Path) -> list[str]:
    """Files at a final (non-temporary) name in the destination that are not complete."""
    from sepme_engine.safetensors_header import read_header

    bad: list[str] = []
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix == ".safetensors":
            try:
                read_header(path)
            except Exception as exc:  # noqa: BLE001 - any failure is a partial file
                bad.append(f"{rel}: {exc}")
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError:
                bad.append(f"{rel}: bad json")
    for folder in [p for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")]:
        if not (folder / "model_index.json").is_file():
            bad.append(f"{folder.name}/: no model_index.json")
    return bad


def temporaries(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith("."))


# -- the template -----------------------------------------------------------------------------
def make_template(work: Path) -> tuple[Path, Path]:
    """(template store, tiny pipeline folder for `base add`)."""
    from sepme_engine.bases import add_base
    from sepme_engine.store import Store
    from tests._fixtures import save_diffusers, tiny

    home = build_template(work / "template" / "home")
    pipe = save_diffusers(tiny("sd1", max_length=8), work / "pipe")
    store = Store(home)
    add_base(store, "tiny", str(pipe))
    data = store.read_manifest("increments", "toy/circle")
    for concept in ("circle", "square"):
        store.write_manifest(
            "increments", f"b1/{concept}", {**data, "base": "b1", "concept": concept}
        )
    store.write_manifest("compositions", "b1", {"base": "b1", "active": ["circle", "square"]})
    return home, pipe


def fresh(template: Path, work: Path, *, leftover: bool = False) -> tuple[Path, Path]:
    if work.exists():
        shutil.rmtree(work)
    home = work / "home"
    shutil.copytree(template, home, symlinks=True)
    dest = work / "dest"
    dest.mkdir()
    if leftover:  # something for prune to collect
        (home / "tmp").mkdir(exist_ok=True)
        (home / "tmp" / f"blob.{DEAD_PID}.x.incomplete").write_bytes(b"a dead writer's leftover")
    return home, dest


# -- kills ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]
    rerun: tuple[str, ...]
    points: tuple[str, ...]
    # for removals: the manifest whose absence means a kill came after the work was done (a
    # rerun then rightly says "not found")
    removes: str | None = None


COMMANDS: tuple[Command, ...] = (
    Command(
        "erase",
        ("erase", "blue", *FAST_ERASE),
        ("erase", "blue", "--force", *FAST_ERASE),
        (
            "blob.before-rename",
            "increment.after-blob",
            "manifest.before-rename:1",
            "manifest.before-rename:2",
            "manifest.before-rename:3",
            "manifest.after-rename:2",
            "increment.after-manifest",
        ),
    ),
    Command(
        "compose --name",
        ("compose", "--restore", "circle", "--name", "v2"),
        ("compose", "--name", "v2"),
        ("manifest.before-rename:1", "manifest.before-rename:2", "manifest.after-rename:1"),
    ),
    Command(
        "export ldm",
        ("export", "{DEST}/m.safetensors"),
        ("export", "{DEST}/m.safetensors", "--force"),
        ("export.before-rename",),
    ),
    Command(
        "export diffusers",
        ("export", "{DEST}/pipe", "--format", "diffusers"),
        ("export", "{DEST}/pipe", "--format", "diffusers", "--force"),
        ("export.mid-write", "export.before-rename"),
    ),
    Command(
        "export lora",
        ("export", "{DEST}/l.safetensors", "--format", "lora"),
        ("export", "{DEST}/l.safetensors", "--format", "lora", "--force"),
        ("export.before-rename",),
    ),
    Command(
        "export --base tiny",
        ("export", "{DEST}/t.safetensors", "--base", "tiny"),
        ("export", "{DEST}/t.safetensors", "--base", "tiny", "--force"),
        ("export.before-rename",),
    ),
    Command(
        "base add",
        ("base", "add", "b2", "{PIPE}"),
        ("base", "add", "b2", "{PIPE}", "--force"),
        (
            "blob.before-rename:1",
            "blob.before-rename:6",
            "base.after-blobs",
            "manifest.before-rename:1",
        ),
    ),
    Command(
        "base rm",
        ("base", "rm", "b1", "-y"),
        ("base", "rm", "b1", "-y"),
        ("base-rm.mid:1", "base-rm.mid:2"),
        removes="manifests/bases/b1.json",
    ),
    Command(
        "base use",
        ("base", "use", "tiny"),
        ("base", "use", "tiny"),
        ("manifest.before-rename:1",),
    ),
    Command(
        "rm",
        ("rm", "circle", "-y"),
        ("rm", "circle", "-y"),
        ("manifest.before-rename:1",),
        removes="manifests/increments/toy/circle.json",
    ),
    Command("store prune", ("store", "prune"), ("store", "prune"), ("prune.mid:1",)),
)


def _fill(args: tuple[str, ...], dest: Path, pipe: Path) -> list[str]:
    return [a.replace("{DEST}", str(dest)).replace("{PIPE}", str(pipe)) for a in args]


def kill_case(
    cmd: Command, template: Path, pipe: Path, work: Path, *, point: str | None, delay: float | None
) -> dict[str, Any]:
    home, dest = fresh(template, work, leftover=cmd.name == "store prune")
    args = _fill(cmd.args, dest, pipe)
    extra = {"SEPME_FAULT_KILL_AT": point} if point else {}
    t0 = time.perf_counter()
    proc = start(args, _env(home, extra))
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    killed = proc.returncode == -signal.SIGKILL
    after_kill = store_problems(home)
    partial = partial_at_final_name(dest)
    already_done = cmd.removes is not None and not (home / cmd.removes).exists()
    rc, _, rerr = run(_fill(cmd.rerun, dest, pipe), _env(home))
    rerun_ok = rc == 0 or (already_done and rc == 1 and "error (not found)" in rerr)
    after_rerun = store_problems(home)
    partial += partial_at_final_name(dest)
    leftovers_after = [p for p in after_rerun if p.startswith("leftover:")]
    return {
        "command": cmd.name,
        "point": point or f"random {delay:.2f}s",
        "killed": killed,
        "exit": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 2),
        "corrupt_after_kill": corrupt(after_kill),
        "leftovers_after_kill": [p for p in after_kill if p.startswith("leftover:")],
        "partial_at_final_name": partial,
        "rerun_exit": rc,
        "rerun_ok": rerun_ok,
        "rerun_error": rerr.strip().splitlines()[-1] if rc and rerr.strip() else "",
        "corrupt_after_rerun": corrupt(after_rerun),
        "stale_in_store_after_rerun": leftovers_after,
        "stale_at_destination_after_rerun": temporaries(dest),
        "stderr_tail": err.strip().splitlines()[-1] if err.strip() and not killed else "",
    }


def duration(cmd: Command, template: Path, pipe: Path, work: Path) -> float:
    home, dest = fresh(template, work, leftover=cmd.name == "store prune")
    t0 = time.perf_counter()
    rc, _, err = run(_fill(cmd.args, dest, pipe), _env(home))
    if rc != 0:
        raise SystemExit(f"{cmd.name} fails without a fault: {err}")
    return time.perf_counter() - t0


# -- concurrency -----------------------------------------------------------------------------------
def concurrent_cases(template: Path, pipe: Path, work: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def record(kind: str, ok: bool, detail: str, home: Path) -> None:
        problems = corrupt(store_problems(home))
        out.append({"kind": kind, "ok": ok and not problems, "detail": detail, "store": problems})

    # erase ×2
    home, dest = fresh(template, work)
    ps = {
        c: start(["erase", c, *FAST_ERASE, "--no-default-preserve"], _env(home))
        for c in ("blue", "green")
    }
    res = {c: (p.wait(timeout=600), p.communicate()[1]) for c, p in ps.items()}
    saved = {}
    for c, (rc, _err) in res.items():
        path = home / "manifests" / "increments" / "toy" / f"{c}.json"
        if rc == 0:
            saved[c] = json.loads(path.read_text())["preserve_prompts"]
    refused = [c for c, (rc, err) in res.items() if rc == 1 and "error (conflict)" in err]
    ok = len(saved) + len(refused) == 2 and bool(saved)
    if len(saved) == 2:
        ok = ok and ("blue" in saved["green"] or "green" in saved["blue"])
    record("erase ×2", ok, f"stored {sorted(saved)}, refused with a conflict {refused}", home)

    # compose ×2 on the same variant
    home, dest = fresh(template, work)
    a = start(["compose", "--restore", "circle", "--name", "v2"], _env(home))
    b = start(["compose", "--name", "v2"], _env(home))
    ra, rb = a.wait(timeout=600), b.wait(timeout=600)
    from sepme_engine.store import Store

    v2 = Store(home).read_manifest("variants", "toy/v2")["active"]
    record(
        "compose ×2, same variant",
        ra == 0 and rb == 0 and v2 in ([], ["circle"]),
        f"exits {ra}, {rb}; v2 = {v2}",
        home,
    )

    # export during rm
    home, dest = fresh(template, work)
    e = start(["export", str(dest / "x.safetensors")], _env(home))
    time.sleep(2.0)
    r = start(["rm", "circle", "-y"], _env(home))
    re_, rr = e.wait(timeout=600), r.wait(timeout=600)
    partial = partial_at_final_name(dest)
    ok = (
        rr == 0
        and (re_ == 0 or (re_ == 1 and not (dest / "x.safetensors").exists()))
        and not partial
    )
    record(
        "export during rm",
        ok,
        f"export exit {re_}, rm exit {rr}, partial {partial}, temporaries {temporaries(dest)}",
        home,
    )

    # base add ×2 of one name
    home, dest = fresh(template, work)
    ps2 = [start(["base", "add", "b2", str(pipe)], _env(home)) for _ in range(2)]
    rcs = [p.wait(timeout=600) for p in ps2]
    errs = [p.communicate()[1] for p in ps2]
    ok = sorted(rcs) == [0, 1] and any("already exists" in e for e in errs)
    record("base add ×2, same name", ok, f"exits {rcs}", home)

    # erase during base rm (item 9)
    home, dest = fresh(template, work)
    e = start(["erase", "blue", "--base", "tiny", *FAST_ERASE, "--steps", "30"], _env(home))
    time.sleep(6.0)
    rc_rm, _, _ = run(["base", "rm", "tiny", "-y"], _env(home))
    rc_e = e.wait(timeout=600)
    err_e = e.communicate()[1]
    orphans = [p for p in store_problems(home) if p.startswith("orphan")]
    ok = rc_rm == 0 and not orphans and (rc_e == 1 and "error (conflict)" in err_e or rc_e != 0)
    tail = err_e.strip().splitlines()[-1] if err_e.strip() else ""
    record("erase during base rm", ok, f"rm exit {rc_rm}, erase exit {rc_e}: {tail[:160]}", home)
    return out


# -- corruptions ------------------------------------------------------------------------------------
def corruption_cases(template: Path, work: Path) -> list[dict[str, Any]]:
    from sepme_engine.store import Store

    out: list[dict[str, Any]] = []

    def flip(path: Path, keep_mtime: bool) -> None:
        st = path.stat()
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x10
        path.write_bytes(bytes(raw))
        if keep_mtime:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def inc_blob(home: Path) -> Path:
        d = Store(home).read_manifest("increments", "toy/circle")["blob"]["digest"]
        return Store(home).blob_path(d)

    def base_blob(home: Path) -> Path:
        files = Store(home).read_manifest("bases", "tiny")["files"]
        return Store(home).blob_path(files["unet/diffusion_pytorch_model.safetensors"]["digest"])

    cases = [
        (
            "increment blob: bit flip in data, mtime kept",
            inc_blob,
            lambda p: flip(p, True),
            ["export", "{DEST}/o.safetensors"],
        ),
        (
            "increment blob: truncated",
            inc_blob,
            lambda p: p.write_bytes(p.read_bytes()[:-64]),
            ["export", "{DEST}/o.safetensors"],
        ),
        (
            "increment blob: missing",
            inc_blob,
            lambda p: p.unlink(),
            ["export", "{DEST}/o.safetensors"],
        ),
        (
            "increment blob: bit flip, LoRA export",
            inc_blob,
            lambda p: flip(p, True),
            ["export", "{DEST}/o.safetensors", "--format", "lora"],
        ),
        (
            "increment blob: bit flip, generate",
            inc_blob,
            lambda p: flip(p, True),
            ["generate", "a red circle", "-o", "{DEST}/g.png", "--n", "1", "--steps", "2"],
        ),
        (
            "base blob: bit flip in data, mtime kept",
            base_blob,
            lambda p: flip(p, True),
            ["export", "{DEST}/o.safetensors", "--base", "tiny"],
        ),
        (
            "base blob: bit flip, mtime changed, erase",
            base_blob,
            lambda p: flip(p, False),
            ["erase", "blue", "--base", "tiny", *FAST_ERASE],
        ),
    ]
    for label, which, damage, args in cases:
        home, dest = fresh(template, work)
        damage(which(home))
        rc, _, err = run([a.replace("{DEST}", str(dest)) for a in args], _env(home))
        lines = [ln for ln in err.splitlines() if ln.strip() and "━" not in ln]
        served = rc == 0
        out.append(
            {
                "case": label,
                "exit": rc,
                "served": served,
                "one_line": len(lines) == 1 and "Traceback" not in err,
                "names_verify": "sepme store verify" in err,
                "destination": temporaries(dest)
                + [p.name for p in dest.iterdir() if not p.name.startswith(".")],
                "message": (lines[-1] if lines else "")[:200],
            }
        )
    return out


# -- bad inputs -----------------------------------------------------------------------------------
def bad_input_cases(template: Path, work: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for case in BAD_INPUTS:
        ctx, args = prepare(case, template, work)
        store_before, outside_before = snapshot(ctx.root), snapshot(ctx.outside)
        rc, stdout, stderr = run(args, _env(ctx.root, ctx.env))
        wrong = judge(ctx, rc, stdout, stderr, store_before, outside_before)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        out.append(
            {
                "case": case.id,
                "exit": rc,
                "ok": not wrong,
                "wrong": wrong,
                "line_chars": len(lines[0]) if lines else 0,
                "message": (lines[0] if lines else "")[:160],
            }
        )
    return out


# -- report ---------------------------------------------------------------------------------------
def write_report(data: dict[str, Any]) -> None:
    kills = data["kills"]
    k_killed = [k for k in kills if k["killed"]]
    lines = [
        "# Fault injection: kills, concurrent writers, corruptions, bad inputs",
        "",
        f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/faults.py --random {data['random']} "
        f"--seed {data['seed']}` — {data['machine']}, {data['wall_s']:.0f} s.",
        "",
        "## Summary",
        "",
        "| what | cases | bar | result |",
        "|---|---:|---|---:|",
        f"| SIGKILL (injected points + random times) | {len(kills)} ({len(k_killed)} killed) | corrupt stores after the kill | {sum(bool(k['corrupt_after_kill']) for k in kills)} |",
        f"| | | partial files at a destination's final name | {sum(bool(k['partial_at_final_name']) for k in kills)} |",
        f"| | | rerun fails (a removal already complete answering 'not found' counts as done) | {sum(not k['rerun_ok'] for k in kills)} |",
        f"| | | corrupt stores after the rerun | {sum(bool(k['corrupt_after_rerun']) for k in kills)} |",
        f"| | | stale temporaries left after the rerun (store / destination) | {sum(bool(k['stale_in_store_after_rerun']) for k in kills)} / {sum(bool(k['stale_at_destination_after_rerun']) for k in kills)} |",
        f"| concurrent writers | {len(data['concurrent'])} | a lost write, a corrupt store | {sum(not c['ok'] for c in data['concurrent'])} |",
        f"| corruptions | {len(data['corruptions'])} | corrupt blobs served | {sum(c['served'] for c in data['corruptions'])} |",
        f"| bad inputs | {len(data['bad_inputs'])} | exit 0, >1 line, traceback, store or outside changed, payload ran | {sum(not b['ok'] for b in data['bad_inputs'])} |",
        "",
        "A kill's leftovers (a temporary in `tmp/` or beside a manifest) are not corruption: "
        "`store verify` lists them as `leftover`, and the next write to the same place removes "
        "them (a temporary's name carries its writer's pid; one whose process is gone is stale).",
        "",
        "## Kills",
        "",
        "| command | kill at | killed | store after kill | leftovers | partial at final name | rerun | store after rerun | stale after rerun |",
        "|---|---|---|---|---:|---|---|---|---|",
    ]
    for k in kills:
        stale = k["stale_in_store_after_rerun"] + k["stale_at_destination_after_rerun"]
        lines.append(
            f"| {k['command']} | {k['point']} | {'yes' if k['killed'] else 'no (exit ' + str(k['exit']) + ')'} "
            f"| {', '.join(k['corrupt_after_kill']) or 'ok'} | {len(k['leftovers_after_kill'])} "
            f"| {', '.join(k['partial_at_final_name']) or 'none'} "
            f"| {k['rerun_exit']}{(': ' + k['rerun_error'][:80]) if k['rerun_error'] else ''} "
            f"| {', '.join(k['corrupt_after_rerun']) or 'ok'} | {', '.join(stale) or 'none'} |"
        )
    lines += ["", "## Concurrent writers", "", "| writers | ok | what happened |", "|---|---|---|"]
    for c in data["concurrent"]:
        lines.append(
            f"| {c['kind']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} {', '.join(c['store'])} |"
        )
    lines += [
        "",
        "## Corruptions",
        "",
        "| damage | command exit | served | one line | names `store verify` | message |",
        "|---|---:|---|---|---|---|",
    ]
    for c in data["corruptions"]:
        lines.append(
            f"| {c['case']} | {c['exit']} | {'YES' if c['served'] else 'no'} | {c['one_line']} "
            f"| {c['names_verify']} | {c['message'].replace('|', '/')} |"
        )
    lines += [
        "",
        "## Bad inputs",
        "",
        "| case | exit | ok | line length | message |",
        "|---|---:|---|---:|---|",
    ]
    for b in data["bad_inputs"]:
        ok = "yes" if b["ok"] else "NO: " + ", ".join(b["wrong"])
        msg = b["message"].replace("|", "/").replace("\x1b", "\\x1b")
        lines.append(f"| {b['case']} | {b['exit']} | {ok} | {b['line_chars']} | {msg} |")
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "faults.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", type=int, default=3, help="random-time kills per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma list: kills,concurrent,corruptions,bad")
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    only = set(filter(None, opts.only.split(","))) or {"kills", "concurrent", "corruptions", "bad"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sepme-faults-") as tmp:
        work = Path(tmp)
        template, pipe = make_template(work)
        data: dict[str, Any] = {
            "random": opts.random,
            "seed": opts.seed,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "kills": [],
            "concurrent": [],
            "corruptions": [],
            "bad_inputs": [],
        }
        if "kills" in only:
            for cmd in COMMANDS:
                for point in cmd.points:
                    data["kills"].append(
                        kill_case(cmd, template, pipe, work / "case", point=point, delay=None)
                    )
                    print(json.dumps(data["kills"][-1])[:300], flush=True)
                if opts.random:
                    total = duration(cmd, template, pipe, work / "case")
                    for _ in range(opts.random):
                        delay = rng.uniform(0.1, 0.9 * total)
                        data["kills"].append(
                            kill_case(cmd, template, pipe, work / "case", point=None, delay=delay)
                        )
                        print(json.dumps(data["kills"][-1])[:300], flush=True)
        if "concurrent" in only:
            data["concurrent"] = concurrent_cases(template, pipe, work / "case")
            print(json.dumps(data["concurrent"]), flush=True)
        if "corruptions" in only:
            data["corruptions"] = corruption_cases(template, work / "case")
            print(json.dumps(data["corruptions"]), flush=True)
        if "bad" in only:
            data["bad_inputs"] = bad_input_cases(template, work / "case")
        data["wall_s"] = time.perf_counter() - t0
    write_report(data)
    print((RESULTS / "faults.md").read_text())


if __name__ == "__main__":
    main()
