"""Re-run recorded benchmarks with the seeds and settings their JSON records, and compare every
deterministic figure (accuracies, lifts, iteration and UNet-pass counts, stop reasons, null-space
sizes) with the recorded one. Wall-clock times are not compared (shared machine).

    .venv/bin/python -m benchmarks.reproduce [--only toy_base,erase_bar] [--out DIR]

- `toy_base`: `benchmarks/toy_eval.py` with its recorded arguments (the toy base's quality:
  sampling, text encoding, the judge).
- `erase_bar`: `benchmarks/erase_bar.py --concepts circle --no-low-tau`, SepME trained with the
  toy settings the record names (`settings.sepme`). Settings added since then take the value
  that reproduces the behaviour of the time (`init = "zero"`, no anchor, no contexts): the
  defaults changed on purpose since (the erase issue's closed-form start), so the record is
  checked against the code path it measured, not against today's defaults.

The comparison is written to `benchmarks/results/reproduce.md` and `.json`. Exit status 1 when a
figure differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

# settings that did not exist when a record was made, at the values that reproduce it
ADDED_SINCE = {
    "init": "zero",
    "anchor": "",
    "contexts": [],
    "cf_push": 0.0,
    "cf_hold": 0.0,
}
_FLOAT_KEYS = {"final_lcor"}  # a float32 loss: compared with a relative tolerance
# timings (any key naming wall time or ending in _s) and machine state are not figures
_SKIP_KEYS = {"seconds", "load_average_at_start", "threads"}


def _leaves(x: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            if k in _SKIP_KEYS or "wall" in k or k.endswith("_s"):
                continue
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(x, list) and all(isinstance(v, (int, float, str, type(None))) for v in x):
        out[prefix] = x
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out.update(_leaves(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = x
    return out


def _same(key: str, a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        if key.rsplit(".", 1)[-1] in _FLOAT_KEYS:
            # float32 training loss summed over a few thousand terms: BLAS order differs by CPU
            return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)
    return bool(a == b)


def compare(recorded: Any, now: Any) -> tuple[int, list[tuple[str, Any, Any]]]:
    """(figures of the record compared, [(key, recorded, now)] for those that differ); a recorded
    figure the new run lacks differs; figures the new run adds (fields added since) are not
    compared."""
    r, n = _leaves(recorded), _leaves(now)
    diffs = [
        (k, r[k], n.get(k, "(absent)")) for k in sorted(r) if not (k in n and _same(k, r[k], n[k]))
    ]
    return len(r), diffs


def run_toy_base(out: Path, rerun: bool = True) -> dict[str, Any]:
    from benchmarks import toy_eval

    rec = json.loads((RESULTS / "toy_base.json").read_text())
    meta = rec["meta"]
    t = time.perf_counter()
    rep = rec["report"]
    argv = [
        *("--n", str(rep["n_per_prompt"]), "--n-blank", str(rep["n_blank"])),
        *("--n-bare", str(meta["n_bare"]), "--seed", str(rep["seed"])),
        *("--steps", str(rep["steps"]), "--guidance", str(rep["guidance"])),
        *("--threads", str(meta["threads"]), "--out-dir", str(out)),
    ]
    if rerun:
        toy_eval.main(argv)
    now = json.loads((out / "toy_base.json").read_text())
    n, diffs = compare(rec["report"], now["report"])
    return {
        "name": "toy_base",
        "command": "python -m benchmarks.toy_eval " + " ".join(argv),
        "compared": n,
        "differ": diffs,
        "wall_s": round(time.perf_counter() - t, 1),
    }


def run_erase_bar(out: Path, rerun: bool = True, concept: str = "circle") -> dict[str, Any]:
    from benchmarks import erase_bar
    from sepme_engine.config import ERASE_DEFAULTS

    rec = json.loads((RESULTS / "erase_bar.json").read_text())
    recorded_settings = rec["settings"]["sepme"]
    saved = dict(ERASE_DEFAULTS["toy"])
    ERASE_DEFAULTS["toy"].update({**ADDED_SINCE, **recorded_settings})
    t = time.perf_counter()
    argv = ["--concepts", concept, "--no-low-tau", "--stem", "erase_bar", "--out", str(out)]
    argv += ["--seed", str(rec["settings"]["seed"]), "--n", str(rec["settings"]["n_per_prompt"])]
    argv += ["--n-blank", str(rec["settings"]["n_blank"])]
    try:
        now = erase_bar.main(argv) if rerun else json.loads((out / "erase_bar.json").read_text())
    finally:
        ERASE_DEFAULTS["toy"].clear()
        ERASE_DEFAULTS["toy"].update(saved)
    want = {
        "chance": rec["chance"][concept],
        "row": json.loads(json.dumps(rec["rows"][concept]["default"])),
    }
    # the record's run sampled every erased concept's bare prompt on the base; this one only
    # `concept`'s, so the others' base bare rates are not re-measured
    for name, figures in want["row"]["concepts"].items():
        if name != concept:
            figures.pop("base_bare", None)
    got = {"chance": now["chance"][concept], "row": now["rows"][concept]["default"]}
    n, diffs = compare(want, got)
    return {
        "name": "erase_bar",
        "command": "python -m benchmarks.erase_bar " + " ".join(argv),
        "settings": {**ADDED_SINCE, **recorded_settings},
        "compared": n,
        "differ": diffs,
        "wall_s": round(time.perf_counter() - t, 1),
    }


RUNS = {"toy_base": run_toy_base, "erase_bar": run_erase_bar}


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Recorded benchmark figures, re-run with the same seeds",
        "",
        "Produced by `python -m benchmarks.reproduce` "
        f"({meta['when']}, {meta['machine']}, torch {meta['torch']}). Every deterministic "
        "figure of the record (accuracies, lifts, chance rates, iteration and UNet-pass counts, "
        "stop reasons, E_k and null-space sizes) is compared with the new run's; wall-clock "
        "times are not (shared machine). The final float32 loss is compared to a relative "
        "1e-3 (summation order differs by CPU).",
        "",
        "| record | re-run as | figures compared | differ | wall s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']}.json | `{r['command']}` | {r['compared']} | {len(r['differ'])} "
            f"| {r['wall_s']} |"
        )
    for r in results:
        if r.get("settings"):
            lines += [
                "",
                f"`{r['name']}`: SepME settings as recorded: `{json.dumps(r['settings'])}`.",
            ]
        if r["differ"]:
            lines += ["", f"## {r['name']}: figures that differ", "", "| figure | recorded | now |"]
            lines.append("|---|---|---|")
            lines += [f"| {k} | {a} | {b} |" for k, a, b in r["differ"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(RUNS), help="records to re-run: " + ",".join(RUNS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/sepme-reproduce"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument(
        "--compare-only", action="store_true", help="compare the runs already in --out again"
    )
    args = ap.parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    rerun = not args.compare_only
    results = [RUNS[name](args.out, rerun) for name in args.only.split(",") if name]
    walls = args.out / "reproduce_walls.json"  # the re-runs' wall times, kept for --compare-only
    if rerun:
        walls.write_text(json.dumps({r["name"]: r["wall_s"] for r in results}))
    elif walls.is_file():
        for r in results:
            r["wall_s"] = json.loads(walls.read_text()).get(r["name"], "–")
    meta = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }
    (args.results / "reproduce.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2, default=str) + "\n"
    )
    (args.results / "reproduce.md").write_text(render(results, meta), encoding="utf-8")
    bad = sum(len(r["differ"]) for r in results)
    print(f"{sum(r['compared'] for r in results)} figures compared, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
