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


# -- SDXL: the real commands' engine functions on a random-weight SDXL-sized single file --------
XL = "xl"
XL_ERASED = ["concept-0", "concept-1"]


def _vm_hwm() -> int:
    """Peak RSS since the last `_reset_hwm` (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_parts() -> dict[str, int]:
    """RssAnon / RssFile now, bytes (a safetensors-loaded model may be file-backed, mmap'd)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _warm_xl(pipe: Any) -> None:
    """Read every weight once (pages in an mmap'd model), as `warm` does for SD 1.5."""
    import torch

    with torch.no_grad():
        for c in ("unet", "vae", "text_encoder", "text_encoder_2"):
            for p in getattr(pipe, c).parameters():
                p.sum()


def _reset_hwm() -> None:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0), so each phase has its own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child_sdxl_make(path: Path) -> dict[str, Any]:
    """The fixture: a random SDXL built directly in fp16 (never fp32), written as an A1111/ComfyUI
    single file (SGM key layout, no sepme metadata: what a downloaded SDXL checkpoint is)."""
    import torch

    from sepme_engine.export.safetensors_writer import TensorEntry, write_safetensors
    from sepme_engine.models.ldm_keys import ldm_key_map

    t0 = time.perf_counter()
    pipe = build_sdxl_pipe(dtype="fp16")
    build_s = time.perf_counter() - t0
    comps = ("unet", "vae", "text_encoder", "text_encoder_2")
    sds = {c: getattr(pipe, c).state_dict() for c in comps}
    entries = []
    for e in ldm_key_map({c: sd.keys() for c, sd in sds.items()}, "sdxl"):
        srcs = [sds[e.component][k] for k in e.diffusers_keys]
        metas = [torch.empty(x.shape, dtype=x.dtype, device="meta") for x in srcs]
        shape = tuple(e.build(metas).shape)
        entries.append(
            TensorEntry(e.ldm_key, srcs[0].dtype, shape, lambda e=e, srcs=srcs: e.build(srcs))
        )
    t1 = time.perf_counter()
    n = write_safetensors(path, entries, {"format": "pt"})
    return {
        "kind": "sdxl fixture",
        "build_s": build_s,
        "write_s": time.perf_counter() - t1,
        "bytes": n,
        "n_tensors": len(entries),
        "params": {c: sum(p.numel() for p in getattr(pipe, c).parameters()) for c in comps},
        "peak_rss": _rss_peak(),
    }


def _xl_increments(layers: list[tuple[str, list[int]]], n: int, m: int, seed: int) -> list[Any]:
    """Random factored increments (m-row orthonormal basis over the 2048-d text space)."""
    import torch

    from sepme_engine.delta.increment import Increment

    d_in = layers[0][1][1]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        basis = torch.linalg.qr(torch.randn(d_in, m, generator=g))[0].T
        coefs = {k: torch.randn(s[0], m, generator=g) * 1e-4 for k, s in layers}
        out.append(Increment.factored(basis, coefs))
    return out


def child_sdxl_add(arg: str) -> dict[str, Any]:
    """`base add xl FILE --link`, two stored random increments, `compose --erase` both."""
    from sepme_engine.bases import add_base
    from sepme_engine.compose import compose
    from sepme_engine.increments import save_increment
    from sepme_engine.store import Store

    home, src = arg.split("::")
    store = Store(Path(home))
    t0 = time.perf_counter()
    info = add_base(store, XL, src, link=True)
    add_s = time.perf_counter() - t0
    layers = [(n, list(s)) for n, s in info.cross_attn_layers]
    t0 = time.perf_counter()
    for name, inc in zip(XL_ERASED, _xl_increments(layers, len(XL_ERASED), 16, 1), strict=True):
        save_increment(
            store,
            info,
            name,
            inc,
            prompt=name,
            method="bench-random",
            m_k=16,
            iterations=0,
            stop_reason="benchmark",
            preserve_prompts=[],
            settings={},
            stats={},
            activate=False,
        )
    inc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = compose(store, XL, erase=XL_ERASED)
    return {
        "kind": "sdxl base add --link + compose",
        "base_add_link_s": add_s,
        "arch": info.arch,
        "n_kv_layers": len(layers),
        "save_increments_s": inc_s,
        "compose_s": time.perf_counter() - t0,
        "active": list(res.active),
        "peak_rss": _rss_peak(),
    }


def child_sdxl_export(arg: str, reps: int) -> dict[str, Any]:
    """`sepme export` (engine `export.run.export`, format ldm, fp16) of the composed SDXL base.
    `export_single_file` is wrapped only to take marks between the load and the write, and to
    repeat the write `reps` times on the loaded model."""
    import sepme_engine.export.single_file as sf
    from sepme_engine.export.run import export
    from sepme_engine.store import Store

    home, out_s = arg.split("::")
    out = Path(out_s)
    store = Store(Path(home))
    marks: dict[str, Any] = {"load_avg_1m_start": os.getloadavg()[0]}
    orig = sf.export_single_file

    def measured(pipe: Any, deltas: Any, dest: Path, **kw: Any) -> Any:
        marks["held_dtype"] = str(next(pipe.unet.parameters()).dtype)
        marks["load_compose_s"] = time.perf_counter() - marks["t0"]
        marks["load_peak"], marks["rss_loaded"] = _vm_hwm(), _rss_parts()
        _warm_xl(pipe)
        marks["rss_model"], marks["rss_model_parts"] = _rss_now(), _rss_parts()
        marks["n_deltas"] = len(deltas)
        walls, rises = [], []
        for _ in range(reps):
            Path(dest).unlink(missing_ok=True)
            _reset_hwm()
            t = time.perf_counter()
            orig(pipe, deltas, dest, **kw)
            walls.append(time.perf_counter() - t)
            rises.append(_vm_hwm() - marks["rss_model"])
        marks["wall_s"], marks["peak_above_model"] = walls, rises
        # then, timing only, in turns on the same loaded model: the export with --hash, the
        # export as `sepme export` runs it, and save_file + fsync of the same composed tensors
        # (built once here: they would have raised the peaks above)
        tensors = _xl_composed(pipe, deltas)
        hashed, plain, saved = [], [], []
        for _ in range(reps):
            for kind, fn in (
                (hashed, lambda: orig(pipe, deltas, dest, **{**kw, "sha256": True})),
                (plain, lambda: orig(pipe, deltas, dest, **kw)),
                (saved, lambda: _save_fsync(tensors, Path(dest))),
            ):
                Path(dest).unlink(missing_ok=True)
                t = time.perf_counter()
                fn()
                kind.append(time.perf_counter() - t)
        tensors.clear()
        marks["turns"] = {"export_hash_s": hashed, "export_s": plain, "save_file_fsync_s": saved}
        marks["load_avg_1m_turns_end"] = os.getloadavg()[0]
        Path(dest).unlink(missing_ok=True)
        return orig(pipe, deltas, dest, **kw)  # the file export() itself reports

    sf.export_single_file = measured  # run.export imports it at call time
    marks["t0"] = time.perf_counter()
    rep = export(store, out, base=XL)
    total_s = time.perf_counter() - marks["t0"]
    size = out.stat().st_size
    out.unlink()
    return {
        "kind": "sdxl export (engine export.run.export, ldm fp16)",
        "total_s_first": total_s,
        "bytes": size,
        "report_bytes": rep.bytes_written,
        "n_tensors": rep.n_tensors,
        "erased": json.loads(rep.metadata["sepme.increments"]),
        **{k: v for k, v in marks.items() if k != "t0"},
        "ru_maxrss": _rss_peak(),
        "load_avg_1m_end": os.getloadavg()[0],
    }


def _xl_composed(pipe: Any, deltas: Any) -> dict[str, Any]:
    """The composed fp16 LDM tensors of an SDXL pipeline, as the save_file baseline writes them."""
    import torch

    from sepme_engine.delta.composition import compose_weight
    from sepme_engine.models.ldm_keys import ldm_key_map

    comps = ("unet", "vae", "text_encoder", "text_encoder_2")
    sds = {c: getattr(pipe, c).state_dict() for c in comps}
    unet_d = {k + ".weight": d for k, d in deltas.items()}
    return {
        e.ldm_key: e.build(
            [
                compose_weight(
                    sds[e.component][k],
                    unet_d.get(k) if e.component == "unet" else None,
                    torch.float16,
                )
                for k in e.diffusers_keys
            ]
        ).contiguous()
        for e in ldm_key_map({c: sd.keys() for c, sd in sds.items()}, "sdxl")
    }


def _save_fsync(tensors: dict[str, Any], out: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(out), metadata={"sepme.version": "bench"})
    _fsync(out)


def child_sdxl_baseline(arg: str, reps: int) -> dict[str, Any]:
    """The same tensors (the composed LDM state, fp16) written by `safetensors.torch.save_file`,
    from the same base loaded the same way."""
    import torch
    from safetensors.torch import save_file

    from sepme_engine.bases import get_base, load_base
    from sepme_engine.compose import composition_deltas, selection
    from sepme_engine.store import Store

    home, out_s = arg.split("::")
    out = Path(out_s)
    store = Store(Path(home))
    info = get_base(store, XL)
    t0 = time.perf_counter()
    pipe = load_base(store, XL, dtype=torch.float16)
    deltas = composition_deltas(store, info, selection(store, info))
    load_s = time.perf_counter() - t0
    load_peak, rss_loaded = _vm_hwm(), _rss_parts()
    _warm_xl(pipe)
    rss_model, rss_model_parts = _rss_now(), _rss_parts()
    _reset_hwm()
    t0 = time.perf_counter()
    tensors = _xl_composed(pipe, deltas)
    cast_s = time.perf_counter() - t0
    save_s, fsync_s, rises = [], [], []
    for _ in range(reps):
        out.unlink(missing_ok=True)
        t1 = time.perf_counter()
        save_file(tensors, str(out), metadata={"sepme.version": "bench"})
        t2 = time.perf_counter()
        _fsync(out)
        save_s.append(t2 - t1)
        fsync_s.append(time.perf_counter() - t2)
        rises.append(_vm_hwm() - rss_model)
    size = out.stat().st_size
    out.unlink(missing_ok=True)
    return {
        "kind": "sdxl save_file (same composed fp16 tensors)",
        "load_compose_s": load_s,
        "compose_cast_s": cast_s,
        "save_s": save_s,
        "fsync_s": fsync_s,
        "bytes": size,
        "n_tensors": len(tensors),
        "rss_model": rss_model,
        "rss_model_parts": rss_model_parts,
        "rss_loaded": rss_loaded,
        "load_peak": load_peak,
        "peak_above_model": rises,
        "ru_maxrss": _rss_peak(),
    }


def child_sdxl_load32(arg: str, limit: int) -> dict[str, Any]:
    """What the export held before it kept an fp16 base in fp16: `load_base` in float32. A
    watchdog stops the load when RSS passes `limit` bytes (the machine is shared)."""
    import threading

    import torch

    from sepme_engine.bases import load_base
    from sepme_engine.store import Store

    store = Store(Path(arg))
    t0 = time.perf_counter()
    state = {"max": 0}

    def watch() -> None:
        while True:
            now = _rss_now()
            state["max"] = max(state["max"], now)
            if now > limit:
                print(
                    json.dumps(
                        {
                            "kind": "sdxl load_base float32",
                            "stopped_at_rss": now,
                            "limit": limit,
                            "after_s": time.perf_counter() - t0,
                        }
                    ),
                    flush=True,
                )
                os._exit(0)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    pipe = load_base(store, XL, dtype=torch.float32)
    return {
        "kind": "sdxl load_base float32",
        "load_s": time.perf_counter() - t0,
        "rss_model": _rss_now(),
        "load_peak": _vm_hwm(),
        "held_dtype": str(next(pipe.unet.parameters()).dtype),
    }


def _run_child(kind: str, arg: str, reps: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--arg", arg]
    cmd += ["--reps", str(reps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load0 = os.getloadavg()[0]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{res.stderr[-3000:]}")
    out = dict(json.loads(res.stdout.strip().splitlines()[-1]))
    out["load_avg_1m"] = [load0, os.getloadavg()[0]]  # before and after the child
    return out


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
    ap.add_argument(
        "--parts",
        default="sd15,sdxl",
        help="sd15 and/or sdxl; a part not run keeps its figures from results/export.json",
    )
    ap.add_argument(
        "--sdxl-dir",
        default=None,
        help="scratch folder for the SDXL run (~14 GB of disk: the 7 GB source file plus one "
        "export at a time); removed afterwards when created here",
    )
    ap.add_argument(
        "--sdxl-from",
        default=None,
        help="render the SDXL section from the child JSON lines already in this folder "
        "(make.json, add.json, export.json, baseline.json) instead of running them",
    )
    ap.add_argument("--sdxl-reps", type=int, default=2)
    args = ap.parse_args()

    if args.child:
        if args.child == "export":
            r = child_export(Path(args.arg), "fp32", args.reps)
        elif args.child == "export16":
            r = child_export(Path(args.arg), "fp16", args.reps)
        elif args.child == "baseline":
            r = child_baseline(Path(args.arg), args.reps)
        elif args.child == "sdxl-make":
            r = child_sdxl_make(Path(args.arg))
        elif args.child == "sdxl-add":
            r = child_sdxl_add(args.arg)
        elif args.child == "sdxl-export":
            r = child_sdxl_export(args.arg, args.reps)
        elif args.child == "sdxl-baseline":
            r = child_sdxl_baseline(args.arg, args.reps)
        elif args.child == "sdxl-load32":
            r = child_sdxl_load32(args.arg, int(args.reps) * 1024**3)
        else:
            r = child_compose([int(x) for x in args.arg.split(",")])
        print(json.dumps(r))
        return

    parts = set(args.parts.split(","))
    previous = (
        json.loads((RESULTS / "export.json").read_text())
        if (RESULTS / "export.json").exists()
        else {}
    )
    sdxl = previous.get("sdxl")
    if "sdxl" in parts:
        sdxl = run_sdxl(args)
    if "sd15" not in parts:
        result = {**previous, "sdxl": sdxl}
        write_results(result)
        return
    main_sd15(args, sdxl)


def run_sdxl(args: argparse.Namespace) -> dict[str, Any]:
    """Make the random SDXL file, `base add --link` + compose, export, save_file; one child each,
    one after the other (the model is 7 GB in fp16: two at once would not fit a small machine)."""
    if args.sdxl_from:
        d = Path(args.sdxl_from)
        runs = {
            k: json.loads((d / f"{k}.json").read_text().strip().splitlines()[-1])
            for k in ("make", "add", "export", "baseline")
        }
    else:
        made = args.sdxl_dir is None
        d = Path(args.sdxl_dir or tempfile.mkdtemp(prefix="sepme-sdxl-bench-"))
        (d / "home").mkdir(parents=True, exist_ok=True)
        src = d / "sdxl-random.safetensors"
        runs = {}
        try:
            runs["make"] = _run_child("sdxl-make", str(src), 1)
            runs["add"] = _run_child("sdxl-add", f"{d / 'home'}::{src}", 1)
            runs["export"] = _run_child(
                "sdxl-export", f"{d / 'home'}::{d / 'out.safetensors'}", args.sdxl_reps
            )
            runs["baseline"] = _run_child(
                "sdxl-baseline", f"{d / 'home'}::{d / 'base.safetensors'}", args.sdxl_reps
            )
        finally:
            for p in d.glob("*.safetensors"):
                p.unlink()
            if made:
                import shutil

                shutil.rmtree(d, ignore_errors=True)
    e, b = runs["export"], runs["baseline"]
    size, bsize = e["bytes"], b["bytes"]
    best_e = min(e["wall_s"])
    best_save = min(b["save_s"])
    best_sf = min(x + y for x, y in zip(b["save_s"], b["fsync_s"], strict=True))
    return {
        "params": runs["make"]["params"],
        "file_bytes": size,
        "n_tensors": e["n_tensors"],
        "held_dtype": e["held_dtype"],
        "export_wall_s": best_e,
        "export_GBps": size / best_e / GB,
        "save_file_s": best_save,
        "save_file_plus_fsync_s": best_sf,
        "save_file_plus_fsync_GBps": bsize / best_sf / GB,
        "ratio_vs_save_file": best_save / best_e * size / bsize,
        "ratio_vs_save_file_plus_fsync": best_sf / best_e * size / bsize,
        "export_peak_rss_above_model": max(e["peak_above_model"]),
        "baseline_peak_rss_above_model": max(b["peak_above_model"]),
        "model_rss": e["rss_model"],
        **_turns_summary(e.get("turns")),
        "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


def _turns_summary(turns: dict[str, list[float]] | None) -> dict[str, Any]:
    """Ratios from the export child's turns (export --hash, export, save_file + fsync in turn on
    one loaded model): per turn save/export, and best against best."""
    if not turns:
        return {}
    import statistics

    ex, eh, sv = turns["export_s"], turns["export_hash_s"], turns["save_file_fsync_s"]
    return {
        "turns_best_export_s": min(ex),
        "turns_best_export_hash_s": min(eh),
        "turns_best_save_file_fsync_s": min(sv),
        "turns_ratio_best": min(sv) / min(ex),
        "turns_ratio_hash_best": min(sv) / min(eh),
        "turns_ratio_median_of_pairs": statistics.median(
            b / a for a, b in zip(ex, sv, strict=True)
        ),
        "turns_ratio_hash_median_of_pairs": statistics.median(
            b / a for a, b in zip(eh, sv, strict=True)
        ),
    }


def write_results(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(result["summary"], result["runs"])
    if result.get("sdxl"):
        md += render_sdxl(result["sdxl"])
    (RESULTS / "export.md").write_text(md)
    print(md)


def main_sd15(args: argparse.Namespace, sdxl: dict[str, Any] | None) -> None:
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
    write_results({"summary": summary, "runs": runs, "sdxl": sdxl})


def render_sdxl(s: dict[str, Any]) -> str:
    def gb(x: float) -> str:
        return f"{x / GB:.2f} GB"

    r = s["runs"]
    e, b, a, mk = r["export"], r["baseline"], r["add"], r["make"]
    p = s["params"]
    times = ", ".join(f"{x:.1f}" for x in e["wall_s"])
    btimes = ", ".join(f"{x:.1f}+{y:.1f}" for x, y in zip(b["save_s"], b["fsync_s"], strict=True))
    lines = [
        "",
        "## SDXL-sized base through `base add --link`, `compose`, `export`",
        "",
        f"A random-weight SDXL base 1.0 (the shipped configs: UNet {p['unet'] / 1e9:.3f} G, "
        f"OpenCLIP bigG {p['text_encoder_2'] / 1e9:.3f} G, CLIP L {p['text_encoder'] / 1e9:.3f} G, "
        f"VAE {p['vae'] / 1e9:.3f} G parameters), built directly in fp16 and written as an "
        f"A1111/ComfyUI single file ({mk['n_tensors']} tensors, {gb(mk['bytes'])}). The engine "
        f"functions of the commands then run on it, each kind in its own subprocess: "
        f"`add_base(..., link=True)` {a['base_add_link_s']:.1f} s (hashing the file), two random "
        f"factored increments (m = 16) on its {a['n_kv_layers']} to_k/to_v layers, "
        f"`compose --erase` both {a['compose_s']:.2f} s, then `export.run.export` to an fp16 LDM "
        f"single file ({s['n_tensors']} tensors, {gb(s['file_bytes'])}). The export holds the fp16 "
        f"base in {s['held_dtype']} (load + compose {e['load_compose_s']:.0f} s). The baseline "
        "loads the same base the same way, builds the same composed fp16 LDM tensors "
        f"(`compose_weight`, {b['compose_cast_s']:.1f} s, not in its row) and writes them with "
        "`safetensors.torch.save_file`. Both first read every weight once (part of the loaded "
        "model is mmap'd from the source file), then take the RSS mark; the peak is VmHWM, "
        "reset at the mark. Produced by `benchmarks/export_bench.py --parts sdxl`.",
        "",
        "| | best time | throughput | peak RSS above loaded model |",
        "|---|---:|---:|---:|",
        f"| sepme export (compose + write + fsync; no hash, the default) | {s['export_wall_s']:.1f} s "
        f"| {s['export_GBps']:.3f} GB/s | {gb(s['export_peak_rss_above_model'])} |",
        f"| `save_file` of the composed fp16 tensors | {s['save_file_s']:.1f} s "
        f"| {b['bytes'] / s['save_file_s'] / GB:.3f} GB/s "
        f"| {gb(s['baseline_peak_rss_above_model'])} |",
        f"| `save_file` + fsync | {s['save_file_plus_fsync_s']:.1f} s "
        f"| {s['save_file_plus_fsync_GBps']:.3f} GB/s | |",
        "",
        f"**Throughput ratio export / save_file: {s['ratio_vs_save_file']:.2f}x; vs save_file + "
        f"fsync: {s['ratio_vs_save_file_plus_fsync']:.2f}x** (goal >= 0.9x). **Peak RSS above the "
        f"loaded model: export {gb(s['export_peak_rss_above_model'])}, save_file "
        f"{gb(s['baseline_peak_rss_above_model'])}**, for a {gb(s['file_bytes'])} file (goal: below "
        f"the file size). The loaded, read model is {gb(s['model_rss'])} of RSS "
        f"({gb(e['rss_model_parts']['RssAnon'])} anonymous, "
        f"{gb(e['rss_model_parts']['RssFile'])} file-backed incl. libraries).",
        "",
        f"Timed runs (s): export {times}; save_file + fsync {btimes}. 1-minute load average "
        "during the export child: "
        f"{e.get('load_avg_1m_start', float('nan')):.1f} at its start, "
        f"{e.get('load_avg_1m_end', float('nan')):.1f} at its end; during the save_file child: "
        + " and ".join(f"{x:.1f}" for x in b.get("load_avg_1m", []))
        + f" (before and after); machine: {s['machine']['platform']}, {s['machine']['cpus']} "
        "CPUs shared with other jobs; 24 GiB RAM, the written files go through the page cache "
        "to a virtual disk.",
        "",
    ]
    turns = e.get("turns")
    if turns:

        def ts(xs: list[float]) -> str:
            return ", ".join(f"{x:.1f}" for x in xs)

        lines[-1:-1] = [
            "",
            "**In turns on one loaded model** (the export child, after the rows above: export "
            "with `--hash`, export as `sepme export` runs it, `save_file` + fsync of the same "
            f"composed tensors, {len(turns['export_s'])} rounds; timing only): export "
            f"{ts(turns['export_s'])} s; export --hash {ts(turns['export_hash_s'])} s; "
            f"save_file + fsync {ts(turns['save_file_fsync_s'])} s. **Ratio vs save_file + fsync: "
            f"{s['turns_ratio_best']:.2f}x best against best, {s['turns_ratio_median_of_pairs']:.2f}x "
            f"the median of the rounds; with --hash {s['turns_ratio_hash_best']:.2f}x / "
            f"{s['turns_ratio_hash_median_of_pairs']:.2f}x.** 1-minute load average at the end of "
            f"the turns: {e.get('load_avg_1m_turns_end', float('nan')):.1f}.",
        ]
    load = max([*e.get("load_avg_1m", []), *b.get("load_avg_1m", [])], default=0.0)
    if load > 2 * s["machine"]["cpus"] - 1:
        lines[-1:-1] = [
            "",
            f"**Measured on a busy machine** (1-minute load average up to {load:.1f} on "
            f"{s['machine']['cpus']} CPUs): the export's threads (compose, write, sha256) and "
            "save_file's one call got an unknown, unequal share of the CPUs, so these figures "
            "do not settle the goal either way.",
        ]
    return "\n".join(lines)


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
