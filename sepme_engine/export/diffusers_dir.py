"""Export a composition as a diffusers pipeline folder (the `save_pretrained` layout).

`model_index.json`, one sub-folder per component: models get their `config.json` and one
safetensors file (`diffusion_pytorch_model.safetensors` for diffusers models, `model.safetensors`
for transformers models) streamed tensor by tensor through the composition rule; tokenizer,
scheduler and other components are saved by their own `save_pretrained`. The folder is built
under a temporary name next to `out_dir` and renamed into place when complete.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from sepme_engine.export._atomic import atomic_dir
from sepme_engine.export.report import (
    ExportReport,
    Meter,
    check_deltas,
    compose_source,
    parse_dtype,
)
from sepme_engine.export.safetensors_writer import TensorEntry, write_plain_file, write_safetensors

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
SEPME_FILE = "sepme_export.json"


def module_entries(
    state: Mapping[str, torch.Tensor],
    out_dtype: torch.dtype,
    deltas: Mapping[str, torch.Tensor] | None = None,
) -> list[TensorEntry]:
    """One entry per state-dict tensor (sorted by key): the composed weight for keys in
    `deltas` (weight keys), the cast weight otherwise; non-floating buffers keep their dtype."""
    deltas = deltas or {}
    entries = []
    for key in sorted(state):
        w = state[key]
        dt = out_dtype if w.is_floating_point() else w.dtype
        entries.append(
            TensorEntry(
                key,
                dt,
                tuple(w.shape),
                functools.partial(compose_source, w, deltas.get(key)),
            )
        )
    return entries


def _is_diffusers_model(obj: Any) -> bool:
    from diffusers import ModelMixin

    return isinstance(obj, ModelMixin)


def _is_transformers_model(obj: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(obj, PreTrainedModel)


def _save_transformers_config(model: Any, folder: Path, dtype: torch.dtype) -> None:
    cfg = copy.deepcopy(model.config)
    # the dtype the weights are stored in (what save_pretrained records)
    if hasattr(cfg, "dtype"):
        cfg.dtype = dtype
    else:  # pragma: no cover - transformers < 4.56
        cfg.torch_dtype = dtype
    cfg.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(folder)  # pragma: no cover - SD text encoders do not generate


def export_diffusers(
    pipe: Any,
    deltas: Mapping[str, torch.Tensor],
    out_dir: Path,
    *,
    dtype: str = "fp16",
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write `pipe` with `deltas` added to its UNet as a diffusers folder at `out_dir`.

    Weights: (W.float() + D).to(dtype) for the UNet weights named in `deltas`
    (module name + ".weight"), W.to(dtype) for every other floating tensor. `metadata` (sepme
    provenance) goes into every weights file's header and into `sepme_export.json`. The pipeline
    is not modified. Raises AlreadyExists (exists, not `force`), BaseMismatch (a delta does not
    fit the UNet), InvalidInput (bad dtype).
    """
    meter = Meter()
    dtype_name, tdtype = parse_dtype(dtype)
    unet_deltas = check_deltas(deltas, pipe.unet.state_dict())
    file_meta = {"format": "pt", **dict(metadata or {})}

    plan: list[tuple[str, Any, list[TensorEntry]]] = []
    for name, comp in pipe.components.items():
        if comp is None:
            continue
        if _is_diffusers_model(comp) or _is_transformers_model(comp):
            d = unet_deltas if name == "unet" else None
            plan.append((name, comp, module_entries(comp.state_dict(), tdtype, d)))
        else:
            plan.append((name, comp, []))
    total = sum(len(e) for _, _, e in plan)
    done = 0

    def tick(i: int, _n: int) -> None:
        if progress is not None:
            progress(done + i, total)

    n_bytes = 0
    n_tensors = 0
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force) as tmp:
        pipe.save_config(tmp)  # model_index.json
        for name, comp, entries in plan:
            sub = tmp / name
            sub.mkdir()
            if _is_diffusers_model(comp):
                comp.save_config(sub)
                n_bytes += write_safetensors(
                    sub / DIFFUSERS_WEIGHTS, entries, file_meta, progress=tick
                )
            elif _is_transformers_model(comp):
                _save_transformers_config(comp, sub, tdtype)
                n_bytes += write_safetensors(
                    sub / TRANSFORMERS_WEIGHTS, entries, file_meta, progress=tick
                )
            else:
                comp.save_pretrained(sub)
            done += len(entries)
            n_tensors += len(entries)
        write_plain_file(
            tmp / SEPME_FILE,
            json.dumps({"dtype": dtype_name, "metadata": dict(metadata or {})}, indent=2).encode(),
        )
    wall, peak, rise = meter.done()
    return ExportReport(
        path=out_dir,
        format="diffusers",
        dtype=dtype_name,
        n_tensors=n_tensors,
        bytes_written=n_bytes,
        wall_s=wall,
        peak_rss_bytes=peak,
        rss_increase_bytes=rise,
        metadata=dict(metadata or {}),
    )
