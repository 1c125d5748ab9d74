"""Mass erasure on the toy base: 12 concepts from a file, 1 process against N processes
(`--launcher accelerate`, gloo on CPU, or NCCL with one GPU a process), and the increments
compared by blob digest.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mass_erase.py [--processes 2] [--steps 10]
    python benchmarks/mass_erase.py --device cuda --processes 2      # on a 2-GPU machine

Each run gets a fresh store (so the training images are generated, not read from a cache) and
one thread a process. Writes benchmarks/results/mass_erase[-cuda].md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digests(home: Path) -> dict[str, str]:
    folder = home / "manifests" / "increments" / "toy"
    return {p.stem: json.loads(p.read_text())["blob"]["digest"] for p in folder.glob("*.json")}


def run(home: Path, concepts: Path, args: argparse.Namespace, processes: int) -> dict:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f"[erase.toy]\nimages = {args.images}\nimage_steps = {args.image_steps}\n"
    )
    cmd = [sys.executable, "-m", "sepme_cli", "erase", "--from-file", str(concepts)]
    cmd += ["--steps", str(args.steps), "--no-verify", "--device", args.device, "--json"]
    if processes > 1:
        cmd += ["--launcher", "accelerate", "--num-processes", str(processes)]
    env = {**os.environ, "SEPME_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{processes} process(es) failed:\n{res.stderr[-3000:]}")
    report = json.loads(res.stdout)
    return {
        "processes": processes,
        "wall_s": round(wall, 1),
        "train_s": round(sum(r["wall_s"] for r in report["rows"]), 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "erased": sum(r["status"] == "erased" for r in report["rows"]),
        "digests": digests(home),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--image-steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from sepme_engine.toy import CONCEPTS

    names = list(CONCEPTS[:12])
    with tempfile.TemporaryDirectory() as tmp:
        concepts = Path(tmp) / "concepts.txt"
        concepts.write_text("# 12 toy concepts\n" + "\n".join(names) + "\n")
        one = run(Path(tmp) / "one", concepts, args, 1)
        many = run(Path(tmp) / "many", concepts, args, args.processes)
    same = one["digests"] == many["digests"] and len(one["digests"]) == 12
    result = {
        "concepts": names,
        "settings": {k: v for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "runs": [one, many],
        "identical": same,
        "speedup": round(one["wall_s"] / many["wall_s"], 2),
    }
    suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
    out = REPO / "benchmarks" / "results" / f"mass_erase{suffix}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {r['processes']} | {r['wall_s']} | {r['train_s']} | {r['erased']} | "
        f"{r['load_before']} → {r['load_after']} |"
        for r in (one, many)
    )
    out.with_suffix(".md").write_text(
        f"""# Mass erasure: 12 toy concepts, 1 against {args.processes} processes

`OMP_NUM_THREADS=1 python benchmarks/mass_erase.py --processes {args.processes} --steps \
{args.steps} --images {args.images} --image-steps {args.image_steps} --device {args.device}`
on {platform.machine()} with {os.cpu_count()} CPU(s) ({args.device}). Each run: a fresh store,
`sepme erase --from-file` (the 2-process run with `--launcher accelerate`), SepME with
{args.steps} iterations and {args.images} training images of {args.image_steps} sampler steps a
concept, no verdict.

| processes | wall (s) | sum of per-concept times (s) | erased | load average (1 min) before → after |
|---|---|---|---|---|
{rows}

- Speed-up: **{result["speedup"]}×** wall time ({one["wall_s"]} s → {many["wall_s"]} s).
- Increments identical (all 12 blob digests equal): **{"yes" if same else "NO"}**.
- The wall time includes each process's start (Python, torch, the toy base) and, with a
  launcher, accelerate's start and the gloo rendezvous. The machine is shared with other work
  (the load average above): these timings are noisy, and two processes on two shared CPU cores
  are not two GPUs — on GPUs each process has its own device and the split scales with them.
"""
    )
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
