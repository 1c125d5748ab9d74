"""Performance figures for sepme on CPU (and, with --device cuda, on a GPU).

    python -m benchmarks.perf [--only cli,import,nullspace,iteration] [--device cpu|cuda] [--dtype fp32|bf16]

* cli: wall time of `sepme --help`, `sepme list` and `sepme base list` (median of 5 fresh processes);
* import: `sepme base add` of an SD 1.5-sized single file (random weights, fp16, ~2 GB) — hashing
  and copying into the store — against a plain `safetensors.torch.load_file` of the same file;
* nullspace: the SVD null-space solve at SD 1.5 size (L = 77, d = 768) for E_k holding the blank
  prompt plus 0 and 9 other concepts (what the 1st and the 10th concept of a set need);
* iteration: SepME erasure iterations (3 UNet passes, one with backward) on an SD 1.5-sized UNet
  at 64×64 latents, batch 1: seconds per iteration and, on CUDA, peak GPU memory.
* iteration-sdxl (not in the default list): the same at SDXL base size (2.57 G UNet parameters,
  128×128 latents, the 2048-d concatenated text embedding and the added conditioning).

Writes benchmarks/results/perf-<device>.md and .json. Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def bench_cli() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SEPME_HOME": home}
        for args in (["--help"], ["list"], ["base", "list"]):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "sepme_cli", *args],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                times.append(time.perf_counter() - t0)
            out["sepme " + " ".join(args)] = {
                "median_s": statistics.median(times),
                "min_s": min(times),
            }
    return out


def bench_import(tmp: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file, save_file

    from benchmarks.export_bench import build_pipe
    from sepme_engine import bases
    from sepme_engine.models.ldm_keys import pipeline_to_ldm
    from sepme_engine.store import Store

    pipe = build_pipe(dtype="fp16")
    path = tmp / "sd15-random.safetensors"
    save_file({k: v.contiguous() for k, v in pipeline_to_ldm(pipe, "sd1").items()}, str(path))
    del pipe
    size = path.stat().st_size
    os.sync()
    t0 = time.perf_counter()
    sd = load_file(str(path))
    t_load = time.perf_counter() - t0
    n_tensors = len(sd)
    # load_file may hand back memory-mapped tensors; touching every byte is the fair baseline
    t0 = time.perf_counter()
    checksum = sum(float(v.sum(dtype=torch.float32)) for v in sd.values() if v.numel())
    t_touch = time.perf_counter() - t0
    del sd
    store = Store(tmp / "home")
    t0 = time.perf_counter()
    info = bases.add_base(store, "sd15", str(path))
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = bases.load_base(store, "sd15", dtype=torch.float16)
    t_reload = time.perf_counter() - t0
    del loaded
    return {
        "file_bytes": size,
        "tensors": n_tensors,
        "arch": info.arch,
        "safetensors_load_file_s": t_load,
        "safetensors_load_file_GBps": size / t_load / 1e9,
        "safetensors_load_and_read_s": t_load + t_touch,
        "safetensors_load_and_read_GBps": size / (t_load + t_touch) / 1e9,
        "checksum": checksum,
        "sepme_base_add_s": t_add,
        "sepme_base_add_GBps": size / t_add / 1e9,
        "sepme_load_base_fp16_s": t_reload,
        "note": "base add = detect (header only) + sha256 + copy into blobs/; load_base = diffusers from_single_file with the shipped config",
    }


def bench_nullspace() -> dict[str, Any]:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sepme_engine.erase.nullspace import null_space
    from sepme_engine.errors import NullSpaceEmpty
    from sepme_engine.models.configs import shipped_configs

    torch.manual_seed(0)
    cfg = shipped_configs("sd1")["text_encoder"]
    text = CLIPTextModel(CLIPTextConfig.from_dict(cfg)).eval()
    rows: dict[str, Any] = {}
    for k in (0, 9):
        ids = torch.randint(0, 49406, (1 + k, 77))
        ids[:, 0] = 49406
        with torch.no_grad():
            emb = text(ids)[0]
        t0 = time.perf_counter()
        try:
            s = null_space(emb)
            m = int(s.shape[0])
        except NullSpaceEmpty:
            m = 0
        rows[f"blank + {k} concepts"] = {
            "rows": int(emb.shape[0] * emb.shape[1]),
            "d": int(emb.shape[-1]),
            "m": m,
            "seconds": time.perf_counter() - t0,
        }
    rows["note"] = (
        "random-weight SD 1.5 text encoder on random token ids: the rank is the worst case; real prompts share tokens and padding"
    )
    return rows


def bench_iteration(
    device: str, dtype: str, iters: int, arch: str = "sd1", pipe: Any = None
) -> dict[str, Any]:
    """`arch` "sd1": SD 1.5 size, 64×64 latents; "sdxl": SDXL base size, 128×128 latents
    (1024 px), the UNet's added conditioning included. `pipe` replaces the random full-size
    model (tests pass a tiny one)."""
    import torch

    from benchmarks.export_bench import build_pipe, build_sdxl_pipe
    from sepme_engine.erase.sepme import train_sepme
    from sepme_engine.erase.settings import build

    if pipe is None:
        pipe = build_sdxl_pipe(dtype="fp32") if arch == "sdxl" else build_pipe(dtype="fp32")
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    pipe.to(device, tdtype)
    side = int(pipe.unet.config.sample_size)
    latents = torch.randn(2, 4, side, side)
    # SepME's Config as `sepme erase` builds it on an SD 1.x base, from C = 0 as when measured
    tname = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    cfg = build("sepme", "sd1", None, {"steps": 1, "init": "zero"}, dtype=tname).config
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    train_sepme(pipe, "a painting by Van Gogh", [], latents, cfg, device)  # warm-up (1 iteration)
    cfg = build("sepme", "sd1", None, {"steps": iters, "init": "zero"}, dtype=tname).config
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(_s: Any) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    last[0] = time.perf_counter()
    r = train_sepme(pipe, "a painting by Van Gogh", [], latents, cfg, device, progress=tick)
    out: dict[str, Any] = {
        "arch": arch,
        "latent_size": side,
        "device": device,
        "dtype": dtype,
        "iterations": r.iterations,
        "s_per_iteration_median": statistics.median(times[1:] or times),
        "s_per_iteration_all": times,
        "m_k": r.m_k,
        "unet_passes_per_iteration": 3,
    }
    if device.startswith("cuda"):
        out["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
    return out


def render(res: dict[str, Any]) -> str:
    lines = [
        f"# Performance ({res['device']}, {res['dtype']})",
        "",
        f"`python -m benchmarks.perf {' '.join(res['argv'])}` on {res['machine']}."
        + (
            " Sections kept from earlier runs: "
            + ", ".join(f"{k} (`{' '.join(v) or '(all)'}`)" for k, v in res["kept"].items())
            + "."
            if res.get("kept")
            else ""
        ),
        "",
    ]
    if "cli" in res:
        lines += [
            "## CLI start-up (median of 5 fresh processes)",
            "",
            "| command | median s | min s |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{k}` | {v['median_s']:.3f} | {v['min_s']:.3f} |" for k, v in res["cli"].items()
        ]
    if "import" in res:
        i = res["import"]
        lines += [
            "",
            "## Import of an SD 1.5-sized single file",
            "",
            f"{i['file_bytes'] / 1e9:.2f} GB, {i['tensors']} tensors ({i['arch']}). {i['note']}.",
            "",
            "| step | seconds | GB/s |",
            "|---|---|---|",
            f"| plain `safetensors.torch.load_file` (returns memory-mapped tensors) | {i['safetensors_load_file_s']:.2f} | {i['safetensors_load_file_GBps']:.2f} |",
            f"| `load_file` + reading every tensor once | {i['safetensors_load_and_read_s']:.2f} | {i['safetensors_load_and_read_GBps']:.2f} |",
            f"| `sepme base add` (hash + copy) | {i['sepme_base_add_s']:.2f} | {i['sepme_base_add_GBps']:.2f} |",
            f"| `load_base` (from_single_file, fp16) | {i['sepme_load_base_fp16_s']:.2f} | |",
        ]
    if "nullspace" in res:
        lines += [
            "",
            "## Null-space solve (SVD, float64) at SD 1.5 size",
            "",
            "| E_k | rows × d | m | seconds |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['rows']} × {v['d']} | {v['m']} | {v['seconds']:.3f} |"
            for k, v in res["nullspace"].items()
            if isinstance(v, dict)
        ]
        lines += ["", res["nullspace"]["note"]]
    if "iteration" in res:
        it = res["iteration"]
        lines += [
            "",
            "## One SepME iteration at SD 1.5 size (64×64 latents, batch 1)",
            "",
            f"- device {it['device']}, {it['dtype']}: **{it['s_per_iteration_median']:.2f} s/iteration** (median of {len(it['s_per_iteration_all'])}), 3 UNet passes each (one with backward); m_k = {it['m_k']}",
        ]
        if "peak_gpu_memory_GiB" in it:
            lines.append(f"- peak GPU memory {it['peak_gpu_memory_GiB']:.2f} GiB on {it['gpu']}")
    if "iteration-sdxl" in res:
        it = res["iteration-sdxl"]
        lines += [
            "",
            "## One SepME iteration at SDXL base size (128×128 latents = 1024 px, batch 1)",
            "",
            f"- device {it['device']}, {it['dtype']}: **{it['s_per_iteration_median']:.2f} s/iteration** (median of {len(it['s_per_iteration_all'])}), 3 UNet passes each (one with backward); m_k = {it['m_k']} (d = 2048)",
        ]
        if "peak_gpu_memory_GiB" in it:
            lines.append(f"- peak GPU memory {it['peak_gpu_memory_GiB']:.2f} GiB on {it['gpu']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="cli,import,nullspace,iteration")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    parts = args.only.split(",")
    res: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "argv": argv if argv is not None else sys.argv[1:],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if "cli" in parts:
        res["cli"] = bench_cli()
    if "nullspace" in parts:
        res["nullspace"] = bench_nullspace()
    if "import" in parts:
        with tempfile.TemporaryDirectory(dir=os.environ.get("SEPME_BENCH_TMP")) as tmp:
            res["import"] = bench_import(Path(tmp))
    if "iteration" in parts:
        res["iteration"] = bench_iteration(args.device, args.dtype, args.iters)
    if "iteration-sdxl" in parts:
        res["iteration-sdxl"] = bench_iteration(args.device, args.dtype, args.iters, "sdxl")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"perf-{args.device.split(':')[0]}"
    # `--only` re-measures some sections; keep the others from the previous results file
    previous = args.out / f"{stem}.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if old.get("dtype") == res["dtype"]:
            kept = {}
            for part in ("cli", "nullspace", "import", "iteration", "iteration-sdxl"):
                if part not in res and part in old:
                    res[part] = old[part]
                    kept[part] = old.get("kept", {}).get(part, old.get("argv", []))
            if kept:
                res["kept"] = kept
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{stem}.md").write_text(render(res), encoding="utf-8")
    print(render(res))
    return res


if __name__ == "__main__":
    main()
