"""How the toy base's SepME defaults were chosen: early stopping with batch 1 vs batch 4.

    python -m benchmarks.erase_defaults      # writes benchmarks/results/erase_defaults.{md,json}

For circle, red and stripes (the erase issue's bar), each erased alone (E_k = the blank prompt),
it trains SepME with the toy's β and the paper's τ = 0 under three settings — batch 1 / lr 1e-2
(the first toy default), batch 4 / lr 1e-2, batch 4 / lr 2e-2 (the second) — and judges
`--n` samples of the bare concept prompt at the stopping iteration. Then, for one concept, it
trains the batch-1 setting with early stopping off for growing iteration caps, to show where the
concept actually goes (and that the batch-1 stop came too early). Lift = accuracy − the base's
rate of the concept in blank-prompt samples (chance). Seeded; CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.erasure import Knobs, Trainer
from benchmarks.erasure import _rate as _verdict_rate
from sepme_engine.delta.hooks import apply_deltas_inplace, sum_deltas
from sepme_engine.erase.sepme import SepMEConfig, train_sepme
from sepme_engine.sampling import sample_images
from sepme_engine.toy import TOY_GUIDANCE, TOY_STEPS, load_toy_pipeline
from sepme_engine.toy.judge import judge_batch

RESULTS = Path(__file__).parent / "results"
SETTINGS: list[tuple[str, int, float]] = [
    ("batch 1, lr 1e-2 (previous default)", 1, 1e-2),
    ("batch 4, lr 1e-2", 4, 1e-2),
    ("batch 4, lr 2e-2", 4, 2e-2),
]


def _rate(images: np.ndarray, concept: str) -> float:
    return _verdict_rate(judge_batch(images), concept)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", default="circle,red,stripes")
    ap.add_argument("--n", type=int, default=16, help="bare-prompt samples per evaluation")
    ap.add_argument("--n-blank", type=int, default=64)
    ap.add_argument("--trajectory", default="circle", help="concept for the no-stop trajectory")
    ap.add_argument("--caps", default="150,300,600")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    pipe = load_toy_pipeline()
    trainer = Trainer(pipe, Knobs(n=args.n, n_blank=args.n_blank, full_prompts=[]))
    s = trainer.settings  # the toy profile's erase defaults
    seed_eval = 1000

    def sample(prompt: str, n: int) -> np.ndarray:
        return sample_images(pipe, [prompt], seed_eval, n, TOY_STEPS, TOY_GUIDANCE)

    def config(bs: int, lr: float, tau: float, cap: int) -> SepMEConfig:
        # the toy profile's Config (as `sepme erase` builds it), from C = 0 as when measured
        options = {"batch_size": bs, "lr": lr, "tau": tau, "steps": cap, "init": "zero"}
        return trainer.method_config("sepme", options)  # type: ignore[no-any-return]

    blank = sample("", args.n_blank)
    rows: list[dict[str, Any]] = []
    trajectory: list[dict[str, Any]] = []
    for concept in args.concepts.split(","):
        lat, data_passes, _ = trainer.data(concept)
        chance = _rate(blank, concept)
        base = _rate(sample(concept, args.n), concept)

        def erase_and_judge(
            cfg: SepMEConfig, concept: str = concept, lat: torch.Tensor = lat
        ) -> tuple[Any, float]:
            r = train_sepme(pipe, concept, [], lat, cfg, "cpu")
            with apply_deltas_inplace(pipe.unet, sum_deltas([r.increment])):
                acc = _rate(sample(concept, args.n), concept)
            return r, acc

        for label, bs, lr in SETTINGS:
            r, acc = erase_and_judge(config(bs, lr, float(s["tau"]), int(s["steps"])))
            row = {
                "concept": concept,
                "setting": label,
                "batch_size": bs,
                "lr": lr,
                "chance": chance,
                "base_bare": base,
                "bare": acc,
                "lift": acc - chance,
                "iterations": r.iterations,
                "stop": r.stop_reason,
                "lcor0": r.lcor_history[0],
                "lcor_mean_last20": float(np.mean(r.lcor_history[-20:])),
                "unet_passes": data_passes + r.unet_passes_training,
                "wall_s": r.wall_s,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if concept == args.trajectory:
            for cap in (int(c) for c in args.caps.split(",")):
                r, acc = erase_and_judge(config(1, 1e-2, -math.inf, cap))
                point = {
                    "concept": concept,
                    "iterations": r.iterations,
                    "lcor_mean_last50": float(np.mean(r.lcor_history[-50:])),
                    "bare": acc,
                    "lift": acc - chance,
                }
                trajectory.append(point)
                print(json.dumps(point), flush=True)
    result = {
        "settings": {
            "argv": " ".join(argv if argv is not None else sys.argv[1:]),
            "toy_defaults": s,
            "n": args.n,
            "n_blank": args.n_blank,
            "sampling": f"DDIM {TOY_STEPS} steps, guidance {TOY_GUIDANCE}, seeds {seed_eval}+",
        },
        "rows": rows,
        "trajectory": trajectory,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "erase_defaults.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "erase_defaults.md").write_text(render_md(result))
    return result


def render_md(r: dict[str, Any]) -> str:
    st = r["settings"]
    out = [
        "# Choosing the toy base's SepME defaults",
        "",
        "Note: these runs use E_k = the blank prompt. The toy profile has since gained default "
        "preserve prompts (its other concepts), which shrink the null space and slow training; "
        "its defaults are now batch 4, lr 4e-2, τ = −1e-3, measured against the erase issue's "
        "bar in [erase_bar.md](erase_bar.md). A row marked '(default)' was the default when it "
        "ran.",
        "",
        f"Generated by `python -m benchmarks.erase_defaults {st['argv']}` in {r['wall_s']:.0f} s "
        f"on CPU (2 cores). Each concept erased alone (E_k = blank prompt), β = "
        f"{st['toy_defaults']['beta']}, λ = {st['toy_defaults']['lam']}, τ = "
        f"{st['toy_defaults']['tau']}, α = {st['toy_defaults']['alpha']}, cap "
        f"{st['toy_defaults']['steps']} iterations; {st['n']} samples of the bare prompt, "
        f"chance from {st['n_blank']} blank-prompt samples; {st['sampling']}. Lift in points; "
        "UNet passes include the training images (data) and 3 × batch per iteration.",
        "",
        "| concept | setting | bare % (base) | lift | iterations | stop | L_cor(0) | mean L_cor, last 20 | UNet passes | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        out.append(
            f"| {x['concept']} | {x['setting']} | {100 * x['bare']:.0f} ({100 * x['base_bare']:.0f}) "
            f"| {100 * x['lift']:+.0f} | {x['iterations']} | {x['stop']} | {x['lcor0']:.2g} "
            f"| {x['lcor_mean_last20']:.2g} | {x['unet_passes']} | {x['wall_s']:.0f} |"
        )
    if r["trajectory"]:
        c = r["trajectory"][0]["concept"]
        out += [
            "",
            f"Batch 1, lr 1e-2 with early stopping off (`{c}`): where the concept goes as training continues.",
            "",
            "| iterations | mean L_cor, last 50 | bare % | lift |",
            "|---|---|---|---|",
        ]
        for p in r["trajectory"]:
            out.append(
                f"| {p['iterations']} | {p['lcor_mean_last50']:.2g} | {100 * p['bare']:.0f} | {100 * p['lift']:+.0f} |"
            )
    out += [
        "",
        "Reading: with batch 1 each iteration's L_cor is one random (x_0, t, noise) draw whose size"
        " varies by orders of magnitude with t, so where the momentum m_n (α = 0.9) crosses τ = 0 is"
        " largely chance — on the previous toy base it stopped at 471 iterations with the bare prompt"
        " 'circle' still 31 points above chance; on this one it stops close to the point where the"
        " concept is just gone (lift ≈ 0, no margin). Averaging L_cor over 4 samples per iteration"
        " makes the stop follow the concept's actual correlation, and lr 2e-2 gets there in about a"
        " third of the iterations and less wall time, for a similar number of UNet passes.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
