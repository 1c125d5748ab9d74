"""SepME against ESD-x, FMN and UCE on the toy world — the SepME paper's protocol, in one run.

    python -m benchmarks.erasure            # full run (writes benchmarks/results/erasure.{md,json})
    python -m benchmarks.erasure --quick    # a few minutes, fewer prompts and samples

Everything is seeded. Sections:

* base: the toy base's per-concept accuracy on the evaluation prompts and its chance rates
  (each concept's rate in samples of the blank prompt);
* scenes 1–5: erase a set at t0, restore one at t1 (scene 4: six concepts at once; scene 5: two
  shapes and a colour in one call, then restore square), for every method (SepME with its
  defaults — closed-form start, then G-CiRs; `sepme-cf`: the closed form alone); SepME increments are trained per scene in the all-known scenario, their E_k built as
  `sepme erase` builds it (the scene's other concepts + the toy profile's default preserve
  prompts, i.e. the other toy concepts — so a concept's E_k is the same in every scene and its
  increment, trained deterministically, is trained once and reused); the baselines per concept
  and merged by adding their ΔW (UCE preserves the same E_k);
* cost: UNet passes, iterations and wall time per concept, and the passes needed to bring the
  bare prompt's lift to ≤ 0 (ESD-x with doubling iteration caps; SepME's default run cut at
  11, 22, 44 iterations and then whole — each cut is a prefix of the same deterministic run).

The erase issue's single-concept bar (circle, red, stripes erased alone, with more samples) is
`benchmarks/erase_bar.py`.

Accuracy of concept c: the fraction of samples the judge labels c (on c's axis). Lift: accuracy
minus the base's chance rate for c. Regular concepts are judged on full prompts that name none
of the erased concepts. Pixel distance: mean |Δ| in [0, 1] units between the composition's and
the base's images for the same prompts and seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepme_engine import erase as registry
from sepme_engine.config import ERASE_DEFAULTS
from sepme_engine.delta.hooks import apply_deltas_inplace, sum_deltas
from sepme_engine.erase import settings as erase_settings
from sepme_engine.erase.data import generate_training_latents
from sepme_engine.erase.run import build_e_k
from sepme_engine.sampling import sample_images
from sepme_engine.toy import (
    COLOURS,
    CONCEPTS,
    SHAPES,
    STYLES,
    TOY_GUIDANCE,
    TOY_STEPS,
    load_toy_pipeline,
)
from sepme_engine.toy.judge import judge_batch
from sepme_engine.toy.world import axis_of, full_caption

RESULTS = Path(__file__).parent / "results"
METHODS = registry.names()
SCENES: list[tuple[str, list[str], str | None]] = [
    ("1: shapes", ["circle", "triangle"], "circle"),
    ("2: colours", ["red", "green", "blue"], "red"),
    ("3: one per axis", ["cross", "yellow", "checks"], "checks"),
    ("4: capacity", ["red", "green", "blue", "circle", "triangle", "checks"], None),
    ("5: multi-concept", ["circle", "square", "red"], "square"),
]
# SepME's cost to reach the erasure level: the default run cut at these caps (min_steps + 1 first)
SEPME_COST_CAPS = (11, 22, 44)


@dataclass
class Knobs:
    n: int  # samples per prompt
    n_blank: int
    full_prompts: list[str]
    seed: int = 0
    esd_caps: tuple[int, ...] = (50, 100, 200, 400)
    esd_lr: float = 1e-3
    fmn_steps: int = 35
    fmn_lr: float = 1e-2
    sepme_steps: int | None = None  # None = the toy default cap
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def eval_prompts(size: int) -> list[str]:
    """Balanced full prompts: 24 = every colour × shape once with the style rotating; 12 = half of
    those (each colour twice, each shape three times, each style four times); 6 = 12's first half;
    72 = every colour × shape × style."""
    if size == 72:
        return [full_caption(c, sh, st) for c in COLOURS for sh in SHAPES for st in STYLES]
    out = []
    for i, colour in enumerate(COLOURS):
        for j, shape in enumerate(SHAPES):
            if size < 24 and (i + j) % 2:
                continue
            out.append(full_caption(colour, shape, STYLES[(i + j) % 3]))
    return out[:size]


def named(prompt: str) -> dict[str, str]:
    words = prompt.split()
    return {axis_of(w): w for w in words if w in CONCEPTS}


class Evaluator:
    """Samples the fixed prompt set with fixed seeds and judges it; caches the base's images."""

    def __init__(self, pipe: Any, knobs: Knobs) -> None:
        self.pipe, self.k = pipe, knobs
        self.bare = list(SHAPES + COLOURS + STYLES)
        self.passes = 0
        self.base_cache: dict[tuple[str, int], np.ndarray] = {}

    def images(self, prompts: list[str], n: int) -> np.ndarray:
        self.passes += len(prompts) * n * TOY_STEPS * 2
        return sample_images(self.pipe, prompts, self.k.seed, n, TOY_STEPS, TOY_GUIDANCE)

    def base_images(self, prompts: list[str], n: int) -> np.ndarray:
        """The base's images, each prompt sampled once per run (same seeds as `images`)."""
        missing = [p for p in dict.fromkeys(prompts) if (p, n) not in self.base_cache]
        if missing:
            imgs = self.images(missing, n)
            for i, p in enumerate(missing):
                self.base_cache[(p, n)] = imgs[i * n : (i + 1) * n]
        return np.concatenate([self.base_cache[(p, n)] for p in prompts])

    def run(
        self,
        deltas: dict[str, torch.Tensor] | None = None,
        bare: list[str] | None = None,
        full: list[str] | None = None,
    ) -> dict[str, Any]:
        """Judge the full prompts (default: the scenes' set) and the bare prompts of `bare`
        (default: all 13 concepts)."""
        bare_list = list(self.bare if bare is None else bare)
        full_list = list(self.k.full_prompts if full is None else full)
        sample = self.images if deltas else self.base_images

        def go() -> dict[str, Any]:
            return {
                "bare": sample(bare_list, self.k.n) if bare_list else np.zeros((0, 1, 1, 3)),
                "full": sample(full_list, self.k.n),
            }

        if deltas:
            with apply_deltas_inplace(self.pipe.unet, deltas):
                imgs = go()
        else:
            imgs = go()
        n = self.k.n
        bare_v = judge_batch(imgs["bare"]) if bare_list else []
        full_v = judge_batch(imgs["full"])
        bare_acc = {c: _rate(bare_v[i * n : (i + 1) * n], c) for i, c in enumerate(bare_list)}
        per_prompt = {p: full_v[i * n : (i + 1) * n] for i, p in enumerate(full_list)}
        return {"bare": bare_acc, "bare_list": bare_list, "per_prompt": per_prompt, "images": imgs}

    def chance(self) -> dict[str, float]:
        """Each concept's rate on the blank prompt's `n_blank` samples. Also sets
        `paired_chance`: its rate on the first `n` of them, whose seeds are the ones every bare
        prompt is sampled with (`sample_images` seeds sample j with seed + j, whatever the
        prompt), so bare − paired chance compares the same seeds."""
        blank = judge_batch(self.images([""], self.k.n_blank))
        self.paired_chance = {c: _rate(blank[: self.k.n], c) for c in CONCEPTS}
        return {c: _rate(blank, c) for c in CONCEPTS}


def _rate(verdicts: list[Any], concept: str) -> float:
    axis = axis_of(concept)
    return sum(v.get(axis) == concept for v in verdicts) / max(1, len(verdicts))


def full_hits(
    ev: dict[str, Any], concept: str, avoid: set[str] | frozenset[str] = frozenset()
) -> list[bool]:
    """Per sample of the full prompts naming `concept` and none of `avoid`: judged `concept`?"""
    hits: list[bool] = []
    axis = axis_of(concept)
    for p, vs in ev["per_prompt"].items():
        names = set(named(p).values())
        if concept in names and not (names & avoid):
            hits.extend(v.get(axis) == concept for v in vs)
    return hits


def full_accuracy(
    ev: dict[str, Any], concept: str, avoid: set[str] | frozenset[str] = frozenset()
) -> float | None:
    """Accuracy for `concept` on full prompts naming it and none of `avoid`."""
    hits = full_hits(ev, concept, avoid)
    return float(np.mean(hits)) if hits else None


class Trainer:
    """Trains increments on the toy base, caching training latents per concept."""

    def __init__(self, pipe: Any, knobs: Knobs) -> None:
        self.pipe, self.k = pipe, knobs
        self.settings = dict(ERASE_DEFAULTS["toy"])
        self.latents: dict[str, tuple[torch.Tensor, int]] = {}
        self.log: list[dict[str, Any]] = []
        self.held: dict[str, list[str]] = {}  # concept -> default preserves held softly
        self.trained: dict[tuple[str, tuple[str, ...], float, int], tuple[Any, dict[str, Any]]] = {}

    def data(self, concept: str) -> tuple[torch.Tensor, int, bool]:
        if concept in self.latents:
            lat, passes = self.latents[concept]
            return lat, passes, True
        s = self.settings
        lat, passes = generate_training_latents(
            self.pipe,
            concept,
            n=int(s["images"]),
            steps=int(s["image_steps"]),
            guidance=float(s["image_guidance"]),
            seed=int(s["seed"]),
            device="cpu",
        )
        self.latents[concept] = (lat, passes)
        return lat, passes, False

    def e_k(self, concept: str, others: list[str], method: str = "sepme") -> list[str]:
        """E_k as `sepme erase` builds it on the toy base (its default preserve prompts included,
        less those a crowded concept holds softly: erase/run.py)."""
        default = list(self.settings["preserve"])
        e_k = build_e_k(concept, others=others, default_preserve=default)
        removable = [q for q in e_k if q in set(default) - set(others)]
        relax = getattr(registry.load(method), "relax_e_k", None)
        if relax is None or not removable:
            return e_k
        kept, held = relax(self.pipe, concept, e_k, removable, self.method_config(method))
        self.held[concept] = held
        return list(kept)

    def config(self, tau: float | None = None, max_steps: int | None = None) -> Any:
        """SepME's Config as `sepme erase` builds it on the toy base (no config.toml), with
        these options."""
        options = {"tau": tau, "steps": max_steps or self.k.sepme_steps}
        return self.method_config("sepme", options)

    def method_config(self, method: str, options: dict[str, Any] | None = None) -> Any:
        return erase_settings.build(method, "toy", None, options).config

    def sepme(
        self,
        concept: str,
        others: list[str],
        tau: float | None = None,
        max_steps: int | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """(increment, its training record). Training is deterministic, so an increment whose
        concept, E_k, τ and cap were trained before is reused, with its record (logged once)."""
        from sepme_engine.erase.sepme import train_sepme

        cfg = self.config(tau, max_steps)
        e_k = self.e_k(concept, others)
        key = (concept, tuple(e_k), cfg.tau, cfg.max_steps)
        if key not in self.trained:
            lat, data_passes, _ = self.data(concept)
            r = train_sepme(self.pipe, concept, e_k, lat, cfg, "cpu")
            self._sepme_record(concept, e_k, cfg.tau, r, r, data_passes)
            self.trained[key] = (r.increment, self.log[-1])
        return self.trained[key]

    def sepme_with_lower_tau(
        self, concept: str, others: list[str] | None = None
    ) -> tuple[tuple[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]:
        """(default τ, lower τ) increments and records from one run: τ_low = τ − ½·|mean L_cor of
        the first 10 iterations| (a 10-iteration probe, the same iterations the run starts
        with). Two runs (training is deterministic: the lower-τ run passes through the very
        increment the default run stops at)."""
        from sepme_engine.erase.sepme import train_sepme

        others = others or []
        e_k = self.e_k(concept, others)
        lat, data_passes, _ = self.data(concept)
        probe = train_sepme(self.pipe, concept, e_k, lat, self.config(max_steps=10), "cpu")
        tau = float(self.settings["tau"])
        tau_low = tau - 0.5 * abs(float(np.mean(probe.lcor_history[:10])))
        default = train_sepme(self.pipe, concept, e_k, lat, self.config(tau), "cpu")
        r = train_sepme(self.pipe, concept, e_k, lat, self.config(tau_low), "cpu")
        self._sepme_record(concept, e_k, tau, default, default, data_passes)
        self.trained[(concept, tuple(e_k), tau, self.config().max_steps)] = (
            default.increment,
            self.log[-1],
        )
        self._sepme_record(concept, e_k, tau_low, r, r, data_passes)
        self.log[-1]["probe_iterations"] = probe.iterations
        return (default.increment, self.log[-2]), (r.increment, self.log[-1])

    def _sepme_record(
        self, concept: str, e_k: list[str], tau: float, res: Any, run: Any, data_passes: int
    ) -> None:
        """Log `res` (a SepMEResult; `run`: the run its m_k and first iterations come from)."""
        self._record(
            "sepme",
            concept,
            res.iterations,
            res.unet_passes_training,
            data_passes,
            res.wall_s,
            res.stop_reason,
            extra={
                "m_k": run.m_k,
                "e_k": len(e_k) + 1,
                "final_lcor": res.final_lcor,
                "lcor_start": float(np.mean(run.lcor_history[:10])),
                "tau": tau,
            },
        )

    def baseline(
        self, method: str, concept: str, steps: int | None = None, others: list[str] | None = None
    ) -> Any:
        module = registry.load(method)
        if method == "sepme-cf":
            e_k = self.e_k(concept, others or [], method)
            rc = module.train(self.pipe, concept, e_k, None, self.method_config(method), "cpu")
            self._record(
                method,
                concept,
                0,
                0,
                0,
                rc.wall_s,
                rc.stop_reason,
                extra={
                    "m_k": rc.m_k,
                    "e_k": len(e_k) + 1,
                    "kv_gap_left": rc.stats["kv_gap_left"],
                },
            )
            return rc.increment
        # the benchmark's own knobs, given as `sepme erase` options would be
        options: dict[str, Any] = {
            "esd-x": {"steps": steps or self.k.esd_caps[-2], "lr": self.k.esd_lr},
            "fmn": {"steps": steps or self.k.fmn_steps, "lr": self.k.fmn_lr},
        }.get(method, {})
        if module.TRAINING_DATA:
            options["seed"] = self.k.seed
            lat, data_passes, _ = self.data(concept)
        else:
            lat, data_passes = None, 0
        config = self.method_config(method, options)
        e_k = self.e_k(concept, [], method) if module.KEEPS_PRESERVE else []
        r = module.train(self.pipe, concept, e_k, lat, config, "cpu")
        self._record(
            method,
            concept,
            r.iterations,
            r.unet_passes_training,
            data_passes,
            r.wall_s,
            r.stop_reason,
        )
        return r.increment

    def _record(
        self,
        method: str,
        concept: str,
        iters: int,
        passes: int,
        data_passes: int,
        wall: float,
        stop: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.log.append(
            {
                "method": method,
                "concept": concept,
                "iterations": iters,
                "unet_passes_training": passes,
                "unet_passes_data": data_passes,
                "unet_passes_total": passes + data_passes,
                "wall_s": round(wall, 2),
                "stop_reason": stop,
                **(extra or {}),
            }
        )


def run_settings(knobs: Knobs, argv: list[str] | None) -> dict[str, Any]:
    """The settings every benchmark result records about its evaluation."""
    return {
        "quick": knobs.quick,
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": knobs.seed,
        "n_per_prompt": knobs.n,
        "n_blank": knobs.n_blank,
        "full_prompts": knobs.full_prompts,
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}"


def _pts(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.0f}"


def summarize(
    ev: dict[str, Any],
    base: dict[str, Any],
    chance: dict[str, float],
    erased: list[str],
    restored: list[str],
    paired: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per concept: accuracies and lifts (`paired`: the blank prompt's rates on the bare
    prompts' own seeds, for `bare_lift_paired`); the regular concepts' mean and worst Δ."""
    avoid = set(erased)
    rows = {}
    for c in CONCEPTS:
        group = "forgotten" if c in erased else "restored" if c in restored else "regular"
        acc_full = full_accuracy(ev, c, set() if c in erased else avoid - {c})
        base_full = full_accuracy(base, c, set() if c in erased else avoid - {c})
        rows[c] = {
            "group": group,
            "bare": ev["bare"].get(c),
            "bare_lift": None if c not in ev["bare"] else ev["bare"][c] - chance[c],
            "bare_lift_paired": None
            if c not in ev["bare"] or paired is None
            else ev["bare"][c] - paired[c],
            "full_samples": len(full_hits(ev, c, set() if c in erased else avoid - {c})),
            "full": acc_full,
            "full_lift": None if acc_full is None else acc_full - chance[c],
            "base_bare": base["bare"][c],
            "base_full": base_full,
            "delta_full_vs_base": None
            if acc_full is None or base_full is None
            else acc_full - base_full,
        }
    reg = [
        r for r in rows.values() if r["group"] == "regular" and r["delta_full_vs_base"] is not None
    ]
    return {
        "concepts": rows,
        "regular_mean_delta_full": float(np.mean([r["delta_full_vs_base"] for r in reg]))
        if reg
        else None,
        "regular_worst_delta_full": float(min(r["delta_full_vs_base"] for r in reg))
        if reg
        else None,
        "forgotten_mean_bare_lift": float(np.mean([rows[c]["bare_lift"] for c in erased]))
        if erased
        else None,
    }


def restored_distance(
    ev: dict[str, Any], base: dict[str, Any], concept: str, knobs: Knobs
) -> dict[str, float]:
    """Pixel distance between the composition's and the base's images of the restored concept's
    prompts (bare and full), same seeds; the base ran every bare prompt, a scene only its own."""
    n = knobs.n
    i, j = ev["bare_list"].index(concept), base["bare_list"].index(concept)
    full_idx = [
        k * n + s
        for k, p in enumerate(knobs.full_prompts)
        if concept in p.split()
        for s in range(n)
    ]
    pairs = {"bare": [(i * n + s, j * n + s) for s in range(n)], "full": [(x, x) for x in full_idx]}

    def diffs(part: str) -> list[np.ndarray]:
        return [np.abs(ev["images"][part][a] - base["images"][part][b]) for a, b in pairs[part]]

    bare_d, full_d = diffs("bare"), diffs("full")
    return {
        "bare_mean_abs": float(np.mean([d.mean() for d in bare_d])),
        "bare_max_abs": float(max(d.max() for d in bare_d)),
        "full_mean_abs": float(np.mean([d.mean() for d in full_d])) if full_d else float("nan"),
        "max_abs": float(max(d.max() for d in bare_d + full_d)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer prompts/samples/iterations (minutes)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--cost-methods", help="methods of the cost section (default: --methods)")
    ap.add_argument("--scenes", default="1,2,3,4,5", help="scenes to run, in this order")
    ap.add_argument("--n", type=int, help="samples per prompt (default 8, quick 4)")
    ap.add_argument(
        "--full-size", type=int, default=12, choices=(6, 12, 24), help="full prompts in the set"
    )
    ap.add_argument("--n-full", type=int, help="use only the first N full prompts")
    ap.add_argument("--n-blank", type=int, help="blank-prompt samples for chance")
    ap.add_argument(
        "--pipe", type=Path, help="a toy-world pipeline folder (default: the shipped toy base)"
    )
    ap.add_argument(
        "--max-steps", type=int, help="cap every trained method's iterations (smoke tests)"
    )
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    quick = args.quick
    knobs = Knobs(
        n=4 if quick else 8,
        n_blank=32 if quick else 96,
        full_prompts=eval_prompts(6 if quick else args.full_size),
        seed=args.seed,
        quick=quick,
    )
    if quick:
        knobs.esd_caps = (25, 50)
        knobs.fmn_steps = 10
        knobs.sepme_steps = 60
    if args.n:
        knobs.n = args.n
    if args.n_full:
        knobs.full_prompts = knobs.full_prompts[: args.n_full]
    if args.n_blank:
        knobs.n_blank = args.n_blank
    if args.max_steps:
        knobs.esd_caps = tuple(min(c, args.max_steps) for c in knobs.esd_caps[:2])
        knobs.fmn_steps = min(knobs.fmn_steps, args.max_steps)
        knobs.sepme_steps = args.max_steps
    methods = [m for m in args.methods.split(",") if m]
    scenes = [SCENES[int(i) - 1] for i in args.scenes.split(",") if i]
    pipe = load_toy_pipeline(args.pipe)
    evaluator = Evaluator(pipe, knobs)
    trainer = Trainer(pipe, knobs)
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)  # noqa: E731

    log("base evaluation")
    chance = evaluator.chance()
    base = evaluator.run()
    base_summary = {
        c: {"bare": base["bare"][c], "full": full_accuracy(base, c), "chance": chance[c]}
        for c in CONCEPTS
    }
    result: dict[str, Any] = {
        "settings": {
            **run_settings(knobs, argv),
            "sampler": type(pipe.scheduler).__name__,
            "steps": TOY_STEPS,
            "guidance": TOY_GUIDANCE,
            "sepme": dict(trainer.settings),
            "sepme_steps_cap": knobs.sepme_steps,
            "esd": {"lr": knobs.esd_lr, "caps": list(knobs.esd_caps)},
            "fmn": {"steps": knobs.fmn_steps, "lr": knobs.fmn_lr},
            "uce": "defaults (ridge 0.1; preserved: E_k as `sepme erase` builds it)",
        },
        "base": base_summary,
    }

    stem = "erasure_quick" if quick else "erasure"

    def save(done: bool) -> None:
        """Write what is measured so far (a run stopped midway still leaves its tables)."""
        result["complete"] = done
        result["training_log"] = trainer.log
        result["held_softly"] = {c: h for c, h in trainer.held.items() if h}
        result["eval_unet_passes"] = evaluator.passes
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        if hasattr(os, "getloadavg"):
            result["load_average_at_save"] = os.getloadavg()[0]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(
            json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8"
        )
        (args.out / f"{stem}.md").write_text(render_md(result), encoding="utf-8")

    save(False)

    baseline_incs: dict[tuple[Any, ...], Any] = {}
    # -- cost to reach the erasure level (bare lift <= 0) for circle ------------------------
    # (first: it is short, and a run stopped early by a time limit still has it; the results do
    # not depend on the order — every training and every evaluation is seeded on its own)
    cost: dict[str, Any] = {}
    target = "circle"
    cost_methods = [m for m in (args.cost_methods or args.methods).split(",") if m]
    for method in cost_methods:
        if method in ("uce", "sepme-cf"):
            inc = baseline_incs.get((method, target)) or trainer.baseline(method, target)
            ev = evaluator.run(sum_deltas([inc]), bare=[target])
            cost[method] = {
                "reached": ev["bare"][target] - chance[target] <= 0,
                "unet_passes": 0,
                "bare_lift": ev["bare"][target] - chance[target],
            }
        elif method == "sepme":
            # the default run cut at growing caps (deterministic: each is a prefix of the
            # default run), then the default run itself; the first to reach lift <= 0 counts
            default_cap = trainer.config().max_steps
            tried = []
            for cap in [c for c in SEPME_COST_CAPS if c < default_cap] + [default_cap]:
                log(f"cost: sepme {target} cap {cap}")
                inc, rec = trainer.sepme(target, [], max_steps=cap)
                ev = evaluator.run(sum_deltas([inc]), bare=[target])
                lift = ev["bare"][target] - chance[target]
                tried.append(
                    {
                        "cap": cap,
                        "iterations": rec["iterations"],
                        "unet_passes": rec["unet_passes_total"],
                        "bare_lift": lift,
                    }
                )
                if lift <= 0:
                    break
            ok = [t for t in tried if t["bare_lift"] <= 0]
            cost[method] = {
                "reached": bool(ok),
                "unet_passes": ok[0]["unet_passes"] if ok else None,
                "tried": tried,
            }
        else:
            steps_list = knobs.esd_caps if method == "esd-x" else (knobs.fmn_steps,)
            tried = []
            for cap in steps_list:
                log(f"cost: {method} {target} cap {cap}")
                inc = trainer.baseline(method, target, steps=cap)
                rec = trainer.log[-1]
                ev = evaluator.run(sum_deltas([inc]), bare=[target])
                lift = ev["bare"][target] - chance[target]
                tried.append(
                    {"cap": cap, "unet_passes": rec["unet_passes_total"], "bare_lift": lift}
                )
                if lift <= 0:
                    break
            ok = [t for t in tried if t["bare_lift"] <= 0]
            cost[method] = {
                "reached": bool(ok),
                "unet_passes": ok[0]["unet_passes"] if ok else None,
                "tried": tried,
            }
    result["cost_to_erase_circle"] = cost
    save(False)

    # -- scenes ---------------------------------------------------------------------------------
    result["scenes"] = {}
    for title, concepts, restore in scenes:
        scene: dict[str, Any] = {"concepts": concepts, "restore": restore, "methods": {}}
        for method in methods:
            log(f"scene {title}: {method}")
            incs: dict[str, Any] = {}
            for c in concepts:
                others = [o for o in concepts if o != c]
                if method == "sepme":
                    incs[c] = trainer.sepme(c, others)[0]
                elif method == "sepme-cf":
                    key = (method, c, tuple(trainer.e_k(c, others)))
                    if key not in baseline_incs:
                        baseline_incs[key] = trainer.baseline(method, c, others=others)
                    incs[c] = baseline_incs[key]
                else:
                    if (method, c) not in baseline_incs:
                        baseline_incs[(method, c)] = trainer.baseline(method, c)
                    incs[c] = baseline_incs[(method, c)]
            order = sorted(incs)
            ev0 = evaluator.run(sum_deltas([incs[c] for c in order]), bare=concepts)
            entry: dict[str, Any] = {
                "t0": summarize(ev0, base, chance, concepts, [], evaluator.paired_chance)
            }
            if restore:
                kept = [c for c in order if c != restore]
                ev1 = evaluator.run(sum_deltas([incs[c] for c in kept]), bare=concepts)
                entry["t1"] = summarize(ev1, base, chance, kept, [restore], evaluator.paired_chance)
                entry["t1"]["restored_distance"] = restored_distance(ev1, base, restore, knobs)
            scene["methods"][method] = entry
            result["scenes"][title] = scene
            save(False)

    log("writing results")
    save(True)
    return result


def _below(summary: dict[str, Any], limit: float) -> str:
    """Regular concepts whose full-prompt accuracy fell more than `limit` below the base's."""
    bad = [
        f"{c} {_pts(v['delta_full_vs_base'])}"
        for c, v in summary["concepts"].items()
        if v["group"] == "regular"
        and v["delta_full_vs_base"] is not None
        and v["delta_full_vs_base"] < limit
    ]
    return ", ".join(bad) or "none"


def bar_check(r: dict[str, Any], method: str = "sepme") -> dict[str, dict[str, Any]]:
    """Per scene: does `method` meet the erase issue's bar (see render_md)?"""
    checks: dict[str, dict[str, Any]] = {}
    for title, scene in r.get("scenes", {}).items():
        e = scene["methods"].get(method)
        if not e:
            continue
        t0 = e["t0"]
        forg = [c for c, v in t0["concepts"].items() if v["group"] == "forgotten"]
        ok_forg = {
            c: t0["concepts"][c]["bare_lift"] <= 0
            and (t0["concepts"][c]["full_lift"] is None or t0["concepts"][c]["full_lift"] <= 0.05)
            for c in forg
        }
        means = [t0["regular_mean_delta_full"]] + (
            [e["t1"]["regular_mean_delta_full"]] if "t1" in e else []
        )
        worsts = [t0["regular_worst_delta_full"]] + (
            [e["t1"]["regular_worst_delta_full"]] if "t1" in e else []
        )
        mean = min(v for v in means if v is not None) if any(v is not None for v in means) else None
        worst = (
            min(v for v in worsts if v is not None) if any(v is not None for v in worsts) else None
        )
        rd = e.get("t1", {}).get("restored_distance")
        restore_ok = rd is None or rd["bare_mean_abs"] <= 1e-6
        # the same seeds: the bare prompt against the blank prompt's first n samples
        paired = {
            c: t0["concepts"][c].get("bare_lift_paired")
            for c in forg
            if t0["concepts"][c].get("bare_lift_paired") is not None
        }
        worst_rows = [
            (v["delta_full_vs_base"], c, v.get("full_samples"), t)
            for t in ("t0", "t1")
            if t in e
            for c, v in e[t]["concepts"].items()
            if v["group"] == "regular"
            and v["delta_full_vs_base"] is not None
            and v["delta_full_vs_base"] < 0
        ]
        checks[title] = {
            "forgotten": ", ".join(f"{c} {'yes' if ok else 'NO'}" for c, ok in ok_forg.items()),
            "mean": mean,
            "worst": worst,
            "restore": "–" if rd is None else f"{rd['bare_mean_abs']:.1e}",
            "paired": ", ".join(f"{c} {_pts(v)}" for c, v in paired.items()),
            "worst_detail": _worst_detail(worst_rows),
            "met": all(ok_forg.values())
            and (mean is None or mean >= -0.01)
            and (worst is None or worst >= -0.03)
            and restore_ok,
        }
    return checks


def _worst_detail(rows: list[tuple[float, str, int | None, str]]) -> str:
    """ "stripes -6 at t0 (1 of 16 samples)" for the most harmed regular concept, or ""."""
    if not rows:
        return ""
    delta, concept, n, t = min(rows)
    return f"{concept} {_pts(delta)} at {t} ({round(-delta * (n or 0))} of {n} samples)"


def render_md(r: dict[str, Any]) -> str:
    s = r["settings"]
    out = [
        "# Erasure benchmark on the toy world"
        + (" (quick)" if s["quick"] else "")
        + ("" if r.get("complete", True) else " — PARTIAL: the run was stopped before the end"),
        "",
        f"Generated by `python -m benchmarks.erasure {s.get('argv', '')}` in {r['wall_s']:.0f} s on CPU (2 cores). "
        f"{s['n_per_prompt']} samples per prompt, {len(s['full_prompts'])} full prompts, {s['n_blank']} blank-prompt samples for chance; "
        f"{s['sampler']} {s['steps']} steps, guidance {s['guidance']}, seed {s['seed']}. Accuracy and lift in percent / points; "
        "lift = accuracy − the base's blank-prompt rate. Wall-clock times depend on what else ran on the "
        f"machine (1-min load average {s.get('load_average_at_start') or 0:.1f} at the start, "
        f"{r.get('load_average_at_save') or 0:.1f} at the end); UNet-pass counts are exact.",
        "",
        "Regular concepts: judged on the full prompts that name none of the erased concepts, against the "
        "base's images for the same seeds. Restored concept: pixel distance (mean |Δ| in [0, 1] units) "
        "between the t1 composition's and the base's images of its bare prompt (which is in every "
        "remaining SepME increment's E_k: decoupled by construction) and of the full prompts naming it "
        "(not in any E_k: these may change).",
        "",
        "SepME's E_k is built as `sepme erase` builds it on the toy base: the blank prompt, the "
        "scene's other concepts and the toy profile's default preserve prompts (all other toy "
        "concepts), so a concept has the same E_k in every scene; training is deterministic, so "
        "each such increment is trained once and reused (the training log lists it once). UCE "
        "preserves the same prompts."
        + (
            f" After the paper's stop, SepME's in-context stage trains on the {n} toy captions "
            "(`train_contexts`: every other batch item a caption naming the concept)."
            if (n := len(s.get("sepme", {}).get("train_contexts", ())))
            else ""
        ),
        "",
        "## Base",
        "",
        "| concept | bare % | full % | chance % |",
        "|---|---|---|---|",
    ]
    for c, v in r["base"].items():
        out.append(f"| {c} | {_pct(v['bare'])} | {_pct(v['full'])} | {_pct(v['chance'])} |")
    for title, scene in r.get("scenes", {}).items():
        out += [
            "",
            f"## Scene {title}: erase {', '.join(scene['concepts'])}"
            + (f", then restore {scene['restore']}" if scene["restore"] else ""),
            "",
        ]
        out += [
            "| method | time | forgotten: bare lift (each) | forgotten: full lift (each) | regular: mean Δ full vs base | regular: worst Δ | restored: bare % (base) | restored: mean pixel distance to the base |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, e in scene["methods"].items():
            for t in ("t0", "t1"):
                if t not in e:
                    continue
                x = e[t]
                forg = [c for c, v in x["concepts"].items() if v["group"] == "forgotten"]
                rest = [c for c, v in x["concepts"].items() if v["group"] == "restored"]
                fb = ", ".join(f"{c} {_pts(x['concepts'][c]['bare_lift'])}" for c in forg)
                ff = ", ".join(f"{c} {_pts(x['concepts'][c]['full_lift'])}" for c in forg)
                rb = (
                    ", ".join(
                        f"{c} {_pct(x['concepts'][c]['bare'])} ({_pct(x['concepts'][c]['base_bare'])})"
                        for c in rest
                    )
                    or "–"
                )
                rd = x.get("restored_distance")
                rdt = (
                    f"bare {rd['bare_mean_abs']:.1e}"
                    + (f" (max {rd['bare_max_abs']:.1e})" if "bare_max_abs" in rd else "")
                    + f"; full {rd['full_mean_abs']:.1e} (max, both {rd['max_abs']:.1e})"
                    if rd
                    else "–"
                )
                out.append(
                    f"| {method} | {t} | {fb} | {ff} | {_pts(x['regular_mean_delta_full'])} | {_pts(x['regular_worst_delta_full'])} | {rb} | {rdt} |"
                )
    bar = bar_check(r)
    if bar:
        out += [
            "",
            "## SepME (default settings) against the erase issue's bar",
            "",
            "Every forgotten concept: bare lift ≤ 0 and full lift ≤ +5 points; regular concepts: "
            "mean Δ ≥ −1 and worst ≥ −3 points; restored bare prompt: pixel distance ≤ 1e-6.",
            "",
            "Two columns say how close a miss is. *Bare lift, same seeds*: the forgotten bare "
            "prompt's rate minus the blank prompt's rate on the same n seeds (the chance column "
            "uses all the blank samples; on 8 samples one image is 12.5 points). *Worst regular*: "
            "the concept, the time and how many of its samples changed.",
            "",
            "| scene | forgotten erased | bare lift, same seeds | regular mean / worst Δ | "
            "worst regular | restore distance | bar |",
            "|---|---|---|---|---|---|---|",
        ]
        for title, b in bar.items():
            out.append(
                f"| {title} | {b['forgotten']} | {b.get('paired', '')} | "
                f"{_pts(b['mean'])} / {_pts(b['worst'])} | {b.get('worst_detail', '')} | "
                f"{b['restore']} | {'met' if b['met'] else 'NOT met'} |"
            )
    if "cost_to_erase_circle" in r:
        out += [
            "",
            "## Cost to bring `circle`'s bare-prompt lift to ≤ 0",
            "",
            "| method | reached | UNet passes (data + training) | notes |",
            "|---|---|---|---|",
        ]
        for m, c in r["cost_to_erase_circle"].items():
            notes = "; ".join(
                f"cap {t['cap']}: {t['unet_passes']} passes, lift {_pts(t['bare_lift'])}"
                for t in c.get("tried", [])
            )
            out.append(
                f"| {m} | {'yes' if c['reached'] else 'no'} | {c['unet_passes'] if c['unet_passes'] is not None else '–'} | {notes} |"
            )
    out += [
        "",
        "## Training log",
        "",
        "| method | concept | iterations | stop | UNet passes data + train | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for t in r.get("training_log", []):
        out.append(
            f"| {t['method']} | {t['concept']} | {t['iterations']} | {t['stop_reason']} | {t['unet_passes_data']} + {t['unet_passes_training']} | {t['wall_s']} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
