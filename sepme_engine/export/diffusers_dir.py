"""Export a composition as a diffusers pipeline folder (the `save_pretrained` layout).

`model_index.json`, one sub-folder per component: models get their `config.json` and one
safetensors file (`diffusion_pytorch_model.safetensors` for diffusers models, `model.safetensors`
for transformers models) streamed tensor by tensor through the composition rule. The folder is
built under a temporary name next to `out_dir` and renamed into place when complete.

Written so that every supported loader reads it (diffusers 0.31+ with transformers 4.4x and 5.x):
- the CLIP text encoder's keys carry the `text_model.` prefix: transformers 5's `state_dict()`
  drops it but loads either form, 4.x needs it (without it, it initialises the encoder at random);
- the CLIP tokenizer is written as the slow `CLIPTokenizer` files that `model_index.json` names
  (`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`); transformers
  5's `save_pretrained` writes only `tokenizer.json`, which 4.x's slow class cannot read;
- no config records the user's local source path (`_name_or_path` is dropped);
- `model_index.json` records the base's settings profile under `_sepme` (diffusers ignores keys
  that start with "_"), so importing the folder back as a base keeps it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from sepme_engine.delta.composition import compose_source
from sepme_engine.export._atomic import atomic_dir
from sepme_engine.export.report import (
    ExportReport,
    Meter,
    check_deltas,
    parse_dtype,
)
from sepme_engine.export.safetensors_writer import TensorEntry, write_plain_file, write_safetensors
from sepme_engine.models.configs import LOCAL_PATH_KEYS, MODEL_INDEX_KEY, without_local_paths

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
    _strip_local_paths(folder / "config.json")
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(folder)  # pragma: no cover - SD text encoders do not generate


def _strip_local_paths(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and any(k in data for k in LOCAL_PATH_KEYS):
        path.unlink()
        _write_json(path, without_local_paths(data))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_plain_file(path, (json.dumps(dict(data), indent=2, sort_keys=True) + "\n").encode())


def _config_json(obj: Any) -> dict[str, Any]:
    """A diffusers ConfigMixin's config as `save_config` writes it, without local paths."""
    return without_local_paths(json.loads(obj.to_json_string()))


def text_encoder_key(model: Any, key: str) -> str:
    """The key a CLIP text encoder's tensor is written under: `text_model.`-prefixed, the layout
    transformers 4.x and 5.x both load."""
    if type(model).__name__ == "CLIPTextModel" and not key.startswith("text_model."):
        return "text_model." + key
    return key


def _save_tokenizer(tok: Any, folder: Path) -> None:
    from sepme_engine.models.tokenizer import slow_tokenizer_files

    files = slow_tokenizer_files(tok)
    if files is None:  # not a CLIP BPE tokenizer: its own format
        tok.save_pretrained(folder)
        return
    for name, text in files.items():
        write_plain_file(folder / name, text.encode("utf-8"))


def export_diffusers(
    pipe: Any,
    deltas: Mapping[str, torch.Tensor],
    out_dir: Path,
    *,
    dtype: str = "fp16",
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    profile: str | None = None,
) -> ExportReport:
    """Write `pipe` with `deltas` added to its UNet as a diffusers folder at `out_dir`.

    `profile` (the base's settings profile, e.g. "toy") is recorded in `model_index.json`.

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
            state = comp.state_dict()
            if _is_transformers_model(comp):
                state = {text_encoder_key(comp, k): v for k, v in state.items()}
            plan.append((name, comp, module_entries(state, tdtype, d)))
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
        index = _config_json(pipe)
        if profile:
            index[MODEL_INDEX_KEY] = {"profile": profile}
        _write_json(tmp / "model_index.json", index)
        for name, comp, entries in plan:
            sub = tmp / name
            sub.mkdir()
            if _is_diffusers_model(comp):
                _write_json(sub / comp.config_name, _config_json(comp))
                n_bytes += write_safetensors(
                    sub / DIFFUSERS_WEIGHTS, entries, file_meta, progress=tick
                )
            elif _is_transformers_model(comp):
                _save_transformers_config(comp, sub, tdtype)
                n_bytes += write_safetensors(
                    sub / TRANSFORMERS_WEIGHTS, entries, file_meta, progress=tick
                )
            elif hasattr(comp, "config_name") and hasattr(comp, "to_json_string"):
                _write_json(sub / comp.config_name, _config_json(comp))  # schedulers
            elif type(comp).__name__.startswith("CLIPTokenizer"):
                _save_tokenizer(comp, sub)
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
