"""Export a composition as one LDM single-file checkpoint (the layout A1111 and ComfyUI load).

UNet under `model.diffusion_model.*`, VAE under `first_stage_model.*`, text encoder under
`cond_stage_model.transformer.*` (SD1, OpenAI CLIP) or `cond_stage_model.model.*` (SD2, OpenCLIP),
SDXL's two under `conditioner.embedders.0.transformer.*` and `conditioner.embedders.1.model.*`,
with the key map and per-key transforms of `sepme_engine.models.ldm_keys`.

Streaming: the header is computed from the tensors' shapes first, then each LDM tensor is
composed ((W.float() + D).to(dtype) for the UNet to_k/to_v weights with a delta, W.to(dtype)
otherwise), transformed, written and released, so memory holds the model plus one tensor.
The file is written under a temporary name next to `out` and renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sepme_engine.delta.composition import compose_source
from sepme_engine.errors import InvalidInput, UnsupportedModel
from sepme_engine.export.modelspec import HASH_KEY, modelspec_metadata
from sepme_engine.export.report import (
    ExportReport,
    Meter,
    check_deltas,
    parse_dtype,
)
from sepme_engine.export.safetensors_writer import TensorEntry, constant, write_safetensors
from sepme_engine.models.arch import arch_facts, arch_for, normalize_prediction_type
from sepme_engine.models.configs import CONFIGS_METADATA_KEY, pipeline_configs
from sepme_engine.models.ldm_keys import LdmEntry, ldm_key_map, openclip_padding


def _prediction_type(pipe: Any, arch: str) -> str:
    """The pipeline scheduler's prediction type ("epsilon" | "v_prediction"; the arch's when the
    scheduler names none), checked against an arch that pins it (sd2 / sd2-v)."""
    facts = arch_facts(arch)
    raw = getattr(getattr(pipe, "scheduler", None), "config", {}).get("prediction_type")
    pred = normalize_prediction_type(raw) if raw else facts.prediction_type
    if facts.pins_prediction_type and pred != facts.prediction_type:
        raise InvalidInput(
            f"arch {arch} is {facts.prediction_type} but the pipeline's scheduler predicts {pred}",
            hint=f"export with arch {arch_for(facts.family, pred)}, or fix the base's "
            "prediction type",
        )
    return pred


def _meta_shape(entry: LdmEntry, sources: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """Shape of the LDM tensor, by running its transform on meta tensors (no data)."""
    metas = [torch.empty(s.shape, dtype=s.dtype, device="meta") for s in sources]
    return tuple(entry.build(metas).shape)


def ldm_entries(
    pipe: Any,
    deltas: Mapping[str, torch.Tensor],
    arch: str,
    out_dtype: torch.dtype,
    *,
    pad_openclip: bool | None = None,
) -> list[TensorEntry]:
    """The LDM file's tensors as lazy entries (each composed and cast when written).

    `pad_openclip` (SD2 only): add the inert 24th OpenCLIP block and identity `text_projection`
    that real SD2 files carry; None = do it when the text encoder has diffusers' 23 layers.
    """
    sds = {
        "unet": pipe.unet.state_dict(),
        "vae": pipe.vae.state_dict(),
        "text_encoder": pipe.text_encoder.state_dict(),
    }
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: OpenCLIP bigG
        sds["text_encoder_2"] = pipe.text_encoder_2.state_dict()
    unet_deltas = check_deltas(deltas, sds["unet"])
    try:
        plan = ldm_key_map({c: sd.keys() for c, sd in sds.items()}, arch)
    except ValueError as exc:
        raise UnsupportedModel(
            f"cannot map this pipeline to the LDM single-file layout: {exc}",
            hint="export it as a diffusers folder instead",
            kind="single-file-layout",
        ) from exc
    used = {(e.component, k) for e in plan for k in e.diffusers_keys}
    lost = [k for k in unet_deltas if ("unet", k) not in used]
    if lost:  # pragma: no cover - the map covers every UNet weight
        raise UnsupportedModel(f"the LDM layout has no place for {lost[:3]}")

    entries: list[TensorEntry] = []
    for e in plan:
        sources = [sds[e.component][k] for k in e.diffusers_keys]
        ds = [unet_deltas.get(k) if e.component == "unet" else None for k in e.diffusers_keys]
        floating = all(s.is_floating_point() for s in sources)
        dt = out_dtype if floating else sources[0].dtype

        def make(
            e: LdmEntry = e, sources: list[torch.Tensor] = sources, ds: list = ds
        ) -> torch.Tensor:
            return e.build([compose_source(s, d) for s, d in zip(sources, ds, strict=True)])

        entries.append(TensorEntry(e.ldm_key, dt, _meta_shape(e, sources), make))

    if arch_facts(arch).text_encoder == "open_clip":  # SD 2.x
        n_layers = int(getattr(pipe.text_encoder.config, "num_hidden_layers", 0))
        if pad_openclip and n_layers != 23:
            raise InvalidInput(
                f"pad_openclip is for SD2's 23-layer text encoder; this one has {n_layers}",
                hint="leave pad_openclip unset",
            )
        if pad_openclip or (pad_openclip is None and n_layers == 23):
            for key, t in openclip_padding(sds["text_encoder"]).items():
                entries.append(TensorEntry(key, out_dtype, tuple(t.shape), constant(t)))
    return entries


def export_single_file(
    pipe: Any,
    deltas: Mapping[str, torch.Tensor],
    out: Path,
    *,
    arch: str,
    dtype: str = "fp16",
    metadata: Mapping[str, str] | None = None,
    title: str | None = None,
    erased: Sequence[str] = (),
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    sha256: bool = False,
    pad_openclip: bool | None = None,
) -> ExportReport:
    """Write `pipe` + `deltas` as one LDM `.safetensors` at `out` (complete or absent).

    `deltas` maps UNet module names (`...attn2.to_k`) to float32 ΔW. `arch` is a key of
    `models.arch.ARCHS`. Metadata: `modelspec.*` (title, description listing `erased`, resolution,
    prediction type from the scheduler), `sepme.configs` (the pipeline's configs as JSON, so
    non-standard models can be re-imported), `sepme.arch`, then the caller's `metadata`
    (provenance: sepme.schema_version, sepme.version, sepme.base_digest, sepme.increments...)
    merged last. `modelspec.hash_sha256` is filled in while the tensors stream out (a thread
    hashes each view while another writes it) when `sha256` is set. The pipeline is not modified.

    Raises InvalidInput (bad dtype/arch, arch vs scheduler mismatch), BaseMismatch (a delta does
    not fit the UNet), UnsupportedModel (keys the LDM layout cannot place), AlreadyExists.
    """
    meter = Meter()
    arch_facts(arch)
    dtype_name, tdtype = parse_dtype(dtype)
    pred = _prediction_type(pipe, arch)
    entries = ldm_entries(pipe, deltas, arch, tdtype, pad_openclip=pad_openclip)

    meta: dict[str, str] = modelspec_metadata(
        arch,
        pred,
        title=title or Path(out).stem,
        erased=list(erased),
        resolution=_resolution(pipe, arch),
    )
    meta[CONFIGS_METADATA_KEY] = json.dumps(pipeline_configs(pipe), sort_keys=True)
    meta["sepme.arch"] = arch
    if metadata:
        meta.update(metadata)
    n_bytes = write_safetensors(
        Path(out),
        entries,
        meta,
        force=force,
        progress=progress,
        hash_key=HASH_KEY if sha256 else None,
    )
    wall, peak, rise = meter.done()
    return ExportReport(
        path=Path(out),
        format="ldm",
        dtype=dtype_name,
        n_tensors=len(entries),
        bytes_written=n_bytes,
        wall_s=wall,
        peak_rss_bytes=peak,
        rss_increase_bytes=rise,
        metadata=meta,
    )


def _resolution(pipe: Any, arch: str) -> str:
    """ "WxH" from the UNet sample size and the VAE scale (real SD: 512x512 / 768x768)."""
    try:
        sample = int(pipe.unet.config.sample_size)
        scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        side = sample * scale
    except (AttributeError, TypeError):  # pragma: no cover - every SD pipeline has these
        return arch_facts(arch).resolution
    return f"{side}x{side}"


__all__ = ["HASH_KEY", "export_single_file", "ldm_entries"]
