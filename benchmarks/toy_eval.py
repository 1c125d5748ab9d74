"""Evaluate the toy base (or any toy pipeline folder) with the analytic judge and write the
per-concept table to benchmarks/results/toy_base.md and .json.

    .venv/bin/python benchmarks/toy_eval.py [--pipeline DIR] [--n 8] [--seed 0]
        [--steps S] [--guidance G] [--name toy_base] [--grid PATH.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sepme_engine.toy import (
    TOY_GUIDANCE,
    TOY_SAMPLER,
    TOY_STEPS,
    load_toy_pipeline,
    toy_pipeline_path,
)
from sepme_engine.toy.evaluate import EvalReport, evaluate
from sepme_engine.toy.world import COLOURS, SHAPES, STYLES

RESULTS = Path(__file__).parent / "results"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def render_markdown(r: EvalReport, meta: dict) -> str:
    lines = [
        "# Toy base: per-concept quality",
        "",
        f"Pipeline: `{meta['pipeline']}`  ",
        f"Sampling: {r.sampler}, {r.steps} steps, guidance {r.guidance}, seed {r.seed}, "
        f"{r.n_per_prompt} samples per prompt, float32 on CPU  ",
        f"Full prompts: {r.n_full_prompts} × {r.n_per_prompt} = {r.n_full_prompts * r.n_per_prompt} "
        f"images; bare prompts: 13 × {meta['n_bare']}; blank prompt: {r.n_blank} images  ",
        "Judge: `sepme_engine.toy.judge` (analytic, ≥ 99 % on rendered images)  ",
        f"Evaluation took {r.seconds:.0f} s ({meta['threads']} threads).",
        "",
    ]
    train = meta.get("train")
    if train:
        lines += [
            f"Training: {train.get('steps')} steps, batch {train['config']['batch']}, "
            f"{train.get('train_seconds', 0) / 60:.1f} min UNet + {train.get('vae_seconds', 0) / 60:.1f} min VAE, "
            f"{train.get('seconds_per_step', float('nan')):.2f} s/step; params: "
            + ", ".join(f"{k} {v:,}" for k, v in train.get("params", {}).items())
            + (
                f"; the last run resumed from step {train['resumed_from_steps']} with shape sampling "
                f"weights {train['config'].get('shape_weights')} (circle, square, triangle, cross)"
                if train.get("resumed_from_steps")
                else ""
            ),
            "",
        ]
    lines += [
        "| concept | axis | full-prompt accuracy | bare-prompt accuracy | chance (blank prompt) |",
        "|---|---|---|---|---|",
    ]
    for axis, values in (("colour", COLOURS), ("shape", SHAPES), ("style", STYLES)):
        for c in values:
            lines.append(
                f"| {c} | {axis} | {_pct(r.full.get(c))} | {_pct(r.bare.get(c))} | {_pct(r.chance.get(c))} |"
            )
    lines += [
        "",
        "| axis | full-prompt accuracy |",
        "|---|---|",
        *(f"| {a} | {_pct(v)} |" for a, v in r.axis_accuracy.items()),
        f"| all three right | {_pct(r.all_correct)} |",
        "",
        f"Minimum per-concept full-prompt accuracy: {_pct(r.min_full())} "
        f"(bar: ≥ 80 % required, ≥ 90 % goal).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", type=Path, default=None)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--n-blank", type=int, default=128)
    ap.add_argument("--n-bare", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=TOY_STEPS)
    ap.add_argument("--guidance", type=float, default=TOY_GUIDANCE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="toy_base")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--grid", type=Path, default=None, help="also save a sample grid (PNG)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = load_toy_pipeline(a.pipeline)
    path = a.pipeline or toy_pipeline_path()
    t0 = time.time()
    r = evaluate(
        pipe, n_per_prompt=a.n, seed=a.seed, steps=a.steps, guidance=a.guidance,
        n_blank=a.n_blank, n_bare=a.n_bare,
    )  # fmt: skip
    train_cfg = Path(path) / "toy_train_config.json"
    meta = {
        "pipeline": str(path) if a.pipeline else "sepme_engine/toy/weights (shipped)",
        "sampler_default": TOY_SAMPLER,
        "n_bare": a.n_bare,
        "threads": a.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "train": json.loads(train_cfg.read_text()) if train_cfg.is_file() else None,
    }
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / f"{a.name}.md").write_text(render_markdown(r, meta), encoding="utf-8")
    (a.out_dir / f"{a.name}.json").write_text(
        json.dumps({"report": r.to_dict(), "meta": meta}, indent=2), encoding="utf-8"
    )
    if a.grid is not None:
        from sepme_engine.sampling import sample_images, save_grid
        from sepme_engine.toy.evaluate import full_prompts

        prompts = full_prompts()[::3][:12]
        imgs = sample_images(pipe, prompts, a.seed, 6, a.steps, a.guidance)
        save_grid(a.grid, imgs, len(prompts), 6, prompts)
    print(render_markdown(r, meta))
    print(f"wrote {a.out_dir / a.name}.md/.json in {time.time() - t0:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
