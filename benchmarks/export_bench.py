"""Benchmark: streaming LDM single-file export vs a plain `safetensors.torch.save_file`.

An SD 1.5-sized pipeline (UNet + VAE + CLIP text encoder from the shipped SD 1.5 configs, random
weights, fp32, ~1.07 G parameters) is exported to an fp16 single file by
`sepme_engine.export.single_file.export_single_file`, and the same LDM tensors, already cast to
fp16, are written by `safetensors.torch.save_file`. Each measurement runs in its own subprocess
so its peak RSS (ru_maxrss) is its own; "above model" is the rise over the RSS once the fp32 model
(and, for the export, the deltas) is in memory. Each child times `--reps` runs and the best time
of each kind is compared. Before timing, each child reads its model's weights once (`warm`): on
this VM the first read of freshly built memory is much slower than later ones. Also timed:
composing 10 random factored increments into per-layer deltas.

    .venv/bin/python benchmarks/export_bench.py [--out-dir DIR] [--reps 4] [--m 64,256]

Writes benchmarks/results/export.md and export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
GB = 1e9


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_pipe(seed: int = 0, dtype: str = "fp32") -> Any:
    """SD 1.5 architecture with random weights, built on the meta device then filled in place
    (so building never holds more than the model), held in `dtype` ("fp32" or "fp16")."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from sepme_engine.models.configs import shipped_configs
    from sepme_engine.models.tokenizer import clip_tokenizer

    cfg = shipped_configs("sd1")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"]))
    g = torch.Generator().manual_seed(seed)
    for model in (unet, vae, text):
        if dtype == "fp16":
            model.to(torch.float16)
        model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02, generator=g)
            for name, b in model.named_buffers():
                if name.endswith("position_ids"):
                    b.copy_(torch.arange(b.shape[-1]).expand_as(b))
                elif b.is_floating_point():
                    b.zero_()
        model.eval()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        scheduler=DDIMScheduler.from_config(cfg["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def _fill_random(models: Any, seed: int, dtype: str) -> None:
    """Materialise meta-device models on the CPU with N(0, 0.02) weights (position ids set)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for model in models:
        if dtype == "fp16":
            model.to(torch.float16)
        model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02, generator=g)
            for name, b in model.named_buffers():
                if name.endswith("position_ids"):
                    b.copy_(torch.arange(b.shape[-1]).expand_as(b))
                elif b.is_floating_point():
                    b.zero_()
        model.eval()


def build_sdxl_pipe(seed: int = 0, dtype: str = "fp32") -> Any:
    """SDXL base 1.0 architecture (the shipped configs: 2.57 G UNet parameters, both text
    encoders) with random weights, built on the meta device then filled in place."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sepme_engine.models.configs import shipped_configs
    from sepme_engine.models.tokenizer import clip_tokenizer

    cfg = shipped_configs("sdxl")

    def text_cfg(name: str) -> Any:
        return CLIPTextConfig(**{k: v for k, v in cfg[name].items() if k != "torch_dtype"})

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        te1 = CLIPTextModel(text_cfg("text_encoder"))
        te2 = CLIPTextModelWithProjection(text_cfg("text_encoder_2"))
    _fill_random((unet, vae, te1, te2), seed, dtype)
    sched = cfg["scheduler"]
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=clip_tokenizer(**cfg["tokenizer"]["clip"]),
        tokenizer_2=clip_tokenizer(**cfg["tokenizer_2"]["clip"]),
        scheduler=getattr(diffusers, sched["_class_name"]).from_config(sched),
    )


def warm(pipe: Any) -> None:
    """Read every weight once so neither measurement pays first-touch costs (on this VM the first
    read of freshly built model memory is several times slower than later ones)."""
    import torch

    with torch.no_grad():
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            for p in m.parameters():
                p.sum()


def random_increments(unet: Any, n: int, m: int, seed: int = 1) -> dict[str, Any]:
    import torch

    from sepme_engine.delta.increment import Increment
    from sepme_engine.delta.layers import kv_shapes

    shapes = kv_shapes(unet)
    d_in = next(iter(shapes.values()))[1]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        basis = torch.linalg.qr(torch.randn(d_in, m, generator=g))[0].T
        coefs = {k: torch.randn(s[0], m, generator=g) * 1e-4 for k, s in shapes.items()}
        out[f"concept-{i}"] = Increment.factored(basis, coefs)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def child_export(out: Path, base_dtype: str, reps: int) -> dict[str, Any]:
    import torch

    from sepme_engine.delta.hooks import sum_deltas as compose_deltas
    from sepme_engine.export.single_file import export_single_file

    torch.manual_seed(0)
    pipe = build_pipe(dtype=base_dtype)
    deltas = compose_deltas(list(random_increments(pipe.unet, 2, 16).values()))
    warm(pipe)
    rss_model, peak_model = _rss_now(), _rss_peak()
    walls = []
    for _ in range(reps):
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        rep = export_single_file(
            pipe,
            deltas,
            out,
            arch="sd1",
            dtype="fp16",
            metadata={"sepme.version": "bench"},
            erased=["concept-0", "concept-1"],
        )
        walls.append(time.perf_counter() - t0)
    out.unlink(missing_ok=True)
    return {
        "kind": f"export ({base_dtype} model)",
        "wall_s": walls,
        "bytes": rep.bytes_written,
        "n_tensors": rep.n_tensors,
        "rss_model": rss_model,
        "peak_before": peak_model,
        "peak_after": _rss_peak(),
        "params": sum(
            p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()
        ),
    }


def child_baseline(out: Path, reps: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from sepme_engine.models.ldm_keys import ldm_key_map

    torch.manual_seed(0)
    pipe = build_pipe()
    warm(pipe)
    rss_model, peak_model = _rss_now(), _rss_peak()
    sds = {c: getattr(pipe, c).state_dict() for c in ("unet", "vae", "text_encoder")}
    t0 = time.perf_counter()
    tensors = {
        e.ldm_key: e.build(
            [sds[e.component][k].to(torch.float16) for k in e.diffusers_keys]
        ).contiguous()
        for e in ldm_key_map({c: sd.keys() for c, sd in sds.items()}, "sd1")
    }
    cast_s = time.perf_counter() - t0
    peak_cast = _rss_peak()
    save_s, fsync_s = [], []
    for _ in range(reps):
        out.unlink(missing_ok=True)
        t1 = time.perf_counter()
        save_file(tensors, str(out), metadata={"sepme.version": "bench"})
        t2 = time.perf_counter()
        _fsync(out)
        save_s.append(t2 - t1)
        fsync_s.append(time.perf_counter() - t2)
    size = out.stat().st_size
    out.unlink(missing_ok=True)
    return {
        "kind": "save_file (fp32 model, pre-cast)",
        "cast_s": cast_s,
        "save_s": save_s,
        "fsync_s": fsync_s,
        "bytes": size,
        "n_tensors": len(tensors),
        "rss_model": rss_model,
        "peak_before": peak_model,
        "peak_after_cast": peak_cast,
        "peak_after": _rss_peak(),
    }


def child_compose(ms: list[int]) -> dict[str, Any]:
    import torch

    from sepme_engine.delta.hooks import sum_deltas as compose_deltas

    with torch.device("meta"):
        from diffusers import UNet2DConditionModel

        from sepme_engine.models.configs import shipped_configs

        unet = UNet2DConditionModel.from_config(shipped_configs("sd1")["unet"])
    rows = []
    default_threads = torch.get_num_threads()
    for threads, m in [(t, m) for t in sorted({default_threads, 1}, reverse=True) for m in ms]:
        torch.set_num_threads(threads)
        incs = random_increments(unet, 10, m, seed=2)
        compose_deltas(list(incs.values())[:1])  # warm-up
        t0 = time.perf_counter()
        deltas = compose_deltas(list(incs.values()))
        compose_s = time.perf_counter() - t0
        # for comparison: one float32 product of the concatenated factors per layer
        t0 = time.perf_counter()
        for layer in deltas:
            c = torch.cat([inc.coefs[layer] for inc in incs.values()], dim=1)
            b = torch.cat([inc.basis for inc in incs.values() if inc.basis is not None], dim=0)
            _ = c @ b
        concat_s = time.perf_counter() - t0
        rows.append(
            {
                "m": m,
                "threads": threads,
                "n_increments": 10,
                "n_layers": len(deltas),
                "compose_s": compose_s,
                "fp32_concat_s": concat_s,
            }
        )
    return {"kind": "compose", "rows": rows}


def _run_child(kind: str, arg: str, reps: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--arg", arg]
    cmd += ["--reps", str(reps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--arg", default="")
    ap.add_argument("--reps", type=int, default=4, help="timed repetitions inside each child")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument(
        "--m",
        default="64,256,691",
        help="basis sizes for the compose timing (691: blank prompt only on SD 1.5)",
    )
    args = ap.parse_args()

    if args.child:
        if args.child == "export":
            r = child_export(Path(args.arg), "fp32", args.reps)
        elif args.child == "export16":
            r = child_export(Path(args.arg), "fp16", args.reps)
        elif args.child == "baseline":
            r = child_baseline(Path(args.arg), args.reps)
        else:
            r = child_compose([int(x) for x in args.arg.split(",")])
        print(json.dumps(r))
        return

    t_start = time.perf_counter()
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="sepme-export-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        runs = {}
        for kind in ("export", "baseline", "export16"):
            runs[kind] = _run_child(kind, str(out_dir / f"{kind}.safetensors"), args.reps)
            print(json.dumps(runs[kind]), file=sys.stderr)
        compose = _run_child("compose", args.m, args.reps)
    finally:
        for p in out_dir.glob("*.safetensors"):
            p.unlink()
        if out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()

    e, b, e16 = runs["export"], runs["baseline"], runs["export16"]
    size = e["bytes"]
    best_e, best_e16 = min(e["wall_s"]), min(e16["wall_s"])
    best_save = min(b["save_s"])
    best_save_fsync = min(x + y for x, y in zip(b["save_s"], b["fsync_s"], strict=True))
    summary = {
        "params": e["params"],
        "file_bytes": size,
        "baseline_file_bytes": b["bytes"],
        "n_tensors": e["n_tensors"],
        "reps": args.reps,
        "export_wall_s": best_e,
        "export_GBps": size / best_e / GB,
        "export_fp16_model_wall_s": best_e16,
        "export_fp16_model_GBps": size / best_e16 / GB,
        "save_file_s": best_save,
        "save_file_GBps": b["bytes"] / best_save / GB,
        "save_file_plus_fsync_s": best_save_fsync,
        "save_file_plus_fsync_GBps": b["bytes"] / best_save_fsync / GB,
        "baseline_cast_s": b["cast_s"],
        "ratio_vs_save_file": best_save / best_e * size / b["bytes"],
        "ratio_vs_save_file_plus_fsync": best_save_fsync / best_e * size / b["bytes"],
        "ratio_vs_cast_save_fsync": (b["cast_s"] + best_save_fsync) / best_e * size / b["bytes"],
        "ratio_fp16_model_vs_save_file_plus_fsync": best_save_fsync / best_e16 * size / b["bytes"],
        "export_model_rss": e["rss_model"],
        "export_peak_rss": e["peak_after"],
        "export_peak_rss_above_model": e["peak_after"] - e["rss_model"],
        "baseline_model_rss": b["rss_model"],
        "baseline_peak_rss": b["peak_after"],
        "baseline_peak_rss_above_model": b["peak_after"] - b["rss_model"],
        "export_fp16_model_rss": e16["rss_model"],
        "export_fp16_model_peak_rss_above_model": e16["peak_after"] - e16["rss_model"],
        "compose": compose,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "bench_wall_s": time.perf_counter() - t_start,
    }
    result = {"summary": summary, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(summary, runs)
    (RESULTS / "export.md").write_text(md)
    print(md)


def render_md(s: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    def gb(x: float) -> str:
        return f"{x / GB:.2f} GB"

    def times(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    e, b, e16 = runs["export"], runs["baseline"], runs["export16"]
    lines = [
        "# Export benchmark: streaming LDM single file vs `safetensors.torch.save_file`",
        "",
        f"SD 1.5-sized pipeline with random weights: {s['params'] / 1e9:.3f} G parameters "
        f"(UNet + VAE + CLIP text encoder from the shipped SD 1.5 configs); fp16 LDM single file "
        f"of {s['n_tensors']} tensors, {gb(s['file_bytes'])}. Each kind runs in its own subprocess "
        f"(so ru_maxrss is its own) and is timed {s['reps']} times; best time shown. Written to "
        "the local disk through the page cache. Produced by `benchmarks/export_bench.py`.",
        "",
        "| | best time | throughput | peak RSS | peak RSS above loaded model |",
        "|---|---:|---:|---:|---:|",
        f"| sepme `export_single_file` from the fp32 model (compose + cast + write + fsync) "
        f"| {s['export_wall_s']:.2f} s | {s['export_GBps']:.2f} GB/s | {gb(s['export_peak_rss'])} "
        f"| {gb(s['export_peak_rss_above_model'])} |",
        f"| `save_file` of the already fp16-cast tensors | {s['save_file_s']:.2f} s "
        f"| {s['save_file_GBps']:.2f} GB/s | {gb(s['baseline_peak_rss'])} "
        f"| {gb(s['baseline_peak_rss_above_model'])} (the fp16 copies + save_file) |",
        f"| `save_file` + fsync | {s['save_file_plus_fsync_s']:.2f} s "
        f"| {s['save_file_plus_fsync_GBps']:.2f} GB/s | | |",
        f"| the baseline's cast to fp16 (not in the rows above) | {s['baseline_cast_s']:.2f} s | | | |",
        f"| sepme `export_single_file` from a model held in fp16 (nothing to cast) "
        f"| {s['export_fp16_model_wall_s']:.2f} s | {s['export_fp16_model_GBps']:.2f} GB/s "
        f"| | {gb(s['export_fp16_model_peak_rss_above_model'])} |",
        "",
        f"**Throughput ratio export / save_file: {s['ratio_vs_save_file']:.2f}x**; "
        f"vs save_file + fsync (the export fsyncs): {s['ratio_vs_save_file_plus_fsync']:.2f}x; "
        f"vs cast + save_file + fsync (the same work): {s['ratio_vs_cast_save_fsync']:.2f}x; "
        f"from an fp16-held model vs save_file + fsync: "
        f"{s['ratio_fp16_model_vs_save_file_plus_fsync']:.2f}x. Goal: >= 0.9x.",
        "",
        f"**Peak RSS above the loaded fp32 model: export {gb(s['export_peak_rss_above_model'])} vs "
        f"save_file {gb(s['baseline_peak_rss_above_model'])}**, for a {gb(s['file_bytes'])} file "
        "(goal: the export's rise stays below the file size). The fp32 model itself is "
        f"{gb(s['export_model_rss'])} of RSS.",
        "",
        "Timed runs (s): export "
        + times(e["wall_s"])
        + "; save_file "
        + times(b["save_s"])
        + "; fsync after save_file "
        + times(b["fsync_s"])
        + "; export from fp16 model "
        + times(e16["wall_s"])
        + ".",
        "",
        "## Composing increments into deltas",
        "",
        "`compose_deltas` of 10 random factored increments (basis m x 768, coefficients per layer) "
        f"over the SD 1.5 UNet's {s['compose']['rows'][0]['n_layers']} to_k/to_v layers; goal < 2 s. "
        "It takes each ΔW from `Increment.delta` (one float32 product per increment and layer) and "
        "sums them in a canonical order; the last column is one float32 product of the concatenated "
        "factors per layer, for comparison. m = 691 is what a single SD 1.5 concept gets when E_k is "
        "only the blank prompt (77 rows of rank 77); more preserved prompts shrink m.",
        "",
        "| basis rows m | torch threads | compose_deltas | fp32 concatenated product |",
        "|---:|---:|---:|---:|",
    ]
    for row in s["compose"]["rows"]:
        lines.append(
            f"| {row['m']} | {row['threads']} | {row['compose_s']:.2f} s | {row['fp32_concat_s']:.2f} s |"
        )
    m = s["machine"]
    lines += [
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs shared with other jobs (1-minute load average "
        f"at the end: {m['load_avg_1m_at_end']:.1f}), Python {m['python']}. Benchmark wall time "
        f"{s['bench_wall_s']:.0f} s. Figures on a busy 2-core VM vary by +-30% between runs.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
