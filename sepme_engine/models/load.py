"""Load a base model as a diffusers StableDiffusionPipeline (StableDiffusionXLPipeline for arch
sdxl), offline and quietly.

- diffusers folder: `from_pretrained(folder, local_files_only=True)`;
- single file (A1111/ComfyUI layout): `from_single_file(path, config=<local folder>,
  local_files_only=True)` where the folder is built from the file's embedded `sepme.configs`
  or from the shipped config of the detected architecture, with the scheduler's prediction type
  set per detection; a pickle checkpoint (only with allow_pickle) is read with
  `torch.load(weights_only=True)` and converted component by component;
- hub id: `from_pretrained(repo_id)` from the local HF cache, or downloaded when online.

The pipeline comes back in eval mode with `requires_grad=False`, no safety checker, progress
bars disabled.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sepme_engine.errors import InvalidInput, OfflineError, UnsupportedModel
from sepme_engine.models.arch import (
    ARCHS,
    arch_facts,
    normalize_prediction_type,
    resolve_device,
)
from sepme_engine.models.configs import (
    CONFIGS_METADATA_KEY,
    set_prediction_type,
    shipped_configs,
    validate_configs,
    write_config_dir,
)
from sepme_engine.models.detect import (
    HUB_CACHE_ALIASES,
    SourceInfo,
    hub_offline,
    inspect_source,
    load_pickle_state_dict,
    read_safetensors_header,
)
from sepme_engine.models.ldm_keys import CLIP_PREFIX, OPENCLIP_PREFIX, canonical_text_key


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence diffusers/transformers info and warnings and their progress bars, then restore."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    d_bars = dlog.is_progress_bar_enabled()
    t_bars = tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype renames
            warnings.filterwarnings("ignore", message=".*safety.checker.*")
            yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if d_bars:
            dlog.enable_progress_bar()
        if t_bars:
            tlog.enable_progress_bar()


def _finish(pipe: Any, device: torch.device, prediction_type: str | None) -> Any:
    if prediction_type and pipe.scheduler.config.get("prediction_type") != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, prediction_type=prediction_type
        )
    xl = getattr(pipe, "text_encoder_2", None) is not None
    if not xl:
        pipe.safety_checker = None
        if hasattr(pipe, "register_to_config"):
            pipe.register_to_config(requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for name in ("unet", "vae", "text_encoder", *(("text_encoder_2",) if xl else ())):
        model = getattr(pipe, name)
        model.eval()
        model.requires_grad_(False)
    return pipe


def single_file_configs(
    info: SourceInfo, arch: str | None = None, configs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The configs used to load a single file: `configs` if given, else the file's embedded
    ones, else the shipped ones for the architecture; scheduler set to the detected prediction."""
    assert info.path is not None
    if configs is not None:
        validate_configs(configs)
        if info.prediction_source == "override" or not configs["scheduler"].get("prediction_type"):
            return set_prediction_type(configs, info.prediction_type)
        return set_prediction_type(configs, str(configs["scheduler"]["prediction_type"]))
    if info.file_format == "safetensors":
        _, metadata = read_safetensors_header(info.path)
        if CONFIGS_METADATA_KEY in metadata:
            configs = validate_configs(json.loads(metadata[CONFIGS_METADATA_KEY]))
    if configs is None:
        if any("non-standard layer sizes" in n for n in info.notes):
            raise UnsupportedModel(
                f"{info.path.name} has non-standard layer sizes and no embedded sepme configs",
                hint="sepme ships configs for standard SD 1.5 / 2.1 sizes only; "
                "use the model's diffusers folder instead",
            )
        configs = shipped_configs(arch or info.arch)
    return set_prediction_type(configs, info.prediction_type)


def pipeline_class(arch: str) -> Any:
    """The diffusers pipeline class for an architecture."""
    import diffusers

    return getattr(diffusers, arch_facts(arch).pipeline)


def _pipeline_kwargs(arch: str) -> dict[str, Any]:
    if arch_facts(arch).pipeline == "StableDiffusionXLPipeline":  # it has no safety checker
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def _from_single_file(path: Path, config_dir: Path, dtype: torch.dtype, arch: str) -> Any:
    return pipeline_class(arch).from_single_file(
        str(path),
        config=str(config_dir),
        local_files_only=True,
        torch_dtype=dtype,
        **_pipeline_kwargs(arch),
    )


def _from_state_dict(checkpoint: dict[str, Any], config_dir: Path, dtype: torch.dtype) -> Any:
    """Build the pipeline component by component from an in-memory LDM state dict."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    cfg = str(config_dir)
    unet = UNet2DConditionModel.from_single_file(
        checkpoint, config=cfg, subfolder="unet", local_files_only=True, torch_dtype=dtype
    )
    vae = AutoencoderKL.from_single_file(
        checkpoint, config=cfg, subfolder="vae", local_files_only=True, torch_dtype=dtype
    )
    text_encoder = create_diffusers_clip_model_from_ldm(
        CLIPTextModel,
        checkpoint,
        config=cfg,
        subfolder="text_encoder",
        torch_dtype=dtype,
        local_files_only=True,
    )
    tokenizer = CLIPTokenizer.from_pretrained(cfg, subfolder="tokenizer", local_files_only=True)
    import diffusers

    sched_cfg = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDIMScheduler"))
    scheduler = scheduler_cls.from_config(sched_cfg)
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _needs_renaming(info: SourceInfo) -> bool:
    return (
        ARCHS[info.arch].n_text_encoders == 1
        and bool(info.text_prefix)
        and info.text_prefix not in (CLIP_PREFIX, OPENCLIP_PREFIX)
    )


def _canonical_text_layout(sd: dict[str, Any], info: SourceInfo) -> dict[str, Any]:
    """The state dict with its text encoder under the standard LDM prefix (A1111 and ComfyUI
    rename the old CompVis and the SGM layouts the same way); other keys unchanged."""
    if not _needs_renaming(info):
        return sd
    canonical = CLIP_PREFIX if ARCHS[info.arch].text_encoder == "clip" else OPENCLIP_PREFIX
    return {canonical_text_key(k, info.text_prefix, canonical): v for k, v in sd.items()}


def _load_hub(repo_id: str, dtype: torch.dtype, allow_pickle: bool, arch: str) -> Any:
    StableDiffusionPipeline = pipeline_class(arch)  # noqa: N806
    kwargs: dict[str, Any] = {"torch_dtype": dtype, **_pipeline_kwargs(arch)}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    for rid in (repo_id, *HUB_CACHE_ALIASES.get(repo_id, ())):
        try:
            return StableDiffusionPipeline.from_pretrained(rid, local_files_only=True, **kwargs)
        except OSError:
            continue
    if hub_offline():
        raise OfflineError(
            f"{repo_id} is not (fully) in the local Hugging Face cache and the hub is offline",
            hint="pass a local path (a diffusers folder or a .safetensors checkpoint), or go online once",
        )
    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, **kwargs)
    except OSError as e:
        raise OfflineError(
            f"could not load {repo_id} from the Hugging Face hub: {e}",
            hint="check the network and the id, or pass a local path",
        ) from e


def load_pipeline(
    source: str | Path | SourceInfo,
    kind: str | None = None,
    *,
    arch: str | None = None,
    prediction_type: str | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    configs: dict[str, Any] | None = None,
) -> Any:
    """Load a base as a StableDiffusionPipeline (see the module docstring for each source kind).

    `source` may be a path, a hub id / short name, or the `SourceInfo` of `inspect_source`.
    `kind` ("diffusers" | "single_file" | "hub"), when given, must match what is found.
    `arch` (a key of `arch.ARCHS`) picks the shipped config for a single file without embedded
    configs; an arch that pins its prediction type (sd2 / sd2-v) also fixes it unless
    `prediction_type` is given. Its text encoder must agree with the detected one.
    `prediction_type` overrides the scheduler's prediction type. `configs` (the `sepme.configs`
    structure, see `configs.py`) replaces a single file's embedded/shipped configs, e.g. to load
    a pickle or a non-standard model whose diffusers configs are known.
    """
    dev = resolve_device(device)
    override = normalize_prediction_type(prediction_type) if prediction_type else None
    if override is None and arch is not None and arch_facts(arch).pins_prediction_type:
        override = ARCHS[arch].prediction_type
    if isinstance(source, SourceInfo):
        info = source
        if override is not None and override != info.prediction_type:
            info = inspect_source(
                info.hub_id or str(info.path), prediction_type=override, allow_pickle=allow_pickle
            )
    else:
        info = inspect_source(source, prediction_type=override, allow_pickle=allow_pickle)
    if kind is not None and kind != info.kind:
        raise InvalidInput(f"{info.source} is a {info.kind} source, not {kind}")
    if arch is not None and ARCHS[arch].text_encoder != ARCHS[info.arch].text_encoder:
        raise InvalidInput(
            f"{info.source} is an {ARCHS[info.arch].label} model, not {ARCHS[arch].label}",
            hint="drop the architecture option to use the detected one",
        )

    final_pred = info.prediction_type
    with quiet_loading():
        if info.kind == "diffusers":
            assert info.path is not None
            pipe = pipeline_class(info.arch).from_pretrained(
                str(info.path),
                local_files_only=True,
                torch_dtype=dtype,
                use_safetensors=None if allow_pickle else True,
                **_pipeline_kwargs(info.arch),
            )
        elif info.kind == "hub":
            assert info.hub_id is not None
            pipe = _load_hub(info.hub_id, dtype, allow_pickle, info.arch)
        else:
            assert info.path is not None
            cfgs = single_file_configs(info, arch, configs)
            final_pred = str(cfgs["scheduler"]["prediction_type"])
            with tempfile.TemporaryDirectory(prefix="sepme-config-") as tmp:
                config_dir = write_config_dir(cfgs, Path(tmp) / "config")
                try:
                    if info.file_format == "pickle" and ARCHS[info.arch].n_text_encoders == 2:
                        raise UnsupportedModel(
                            f"{info.path.name} is an SDXL pickle checkpoint; sepme reads SDXL "
                            "single files as .safetensors only",
                            hint="convert it to .safetensors with a tool you trust",
                        )
                    if info.file_format == "pickle":
                        sd = _canonical_text_layout(load_pickle_state_dict(info.path), info)
                        pipe = _from_state_dict(sd, config_dir, dtype)
                    elif _needs_renaming(info):
                        from safetensors.torch import load_file

                        sd = _canonical_text_layout(load_file(str(info.path)), info)
                        pipe = _from_state_dict(sd, config_dir, dtype)
                    else:
                        pipe = _from_single_file(info.path, config_dir, dtype, info.arch)
                except (ValueError, RuntimeError, KeyError) as e:
                    raise UnsupportedModel(
                        f"could not build a {ARCHS[info.arch].label} pipeline from {info.path.name}: {e}",
                        hint="the weights do not fit the configuration; use the model's diffusers folder",
                    ) from e
    return _finish(pipe, dev, final_pred)


__all__ = [
    "load_pipeline",
    "pipeline_class",
    "quiet_loading",
    "resolve_device",
    "single_file_configs",
]
