"""Files on disk for import tests: tiny pipelines as diffusers folders and A1111 single files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests._tiny import shared_tiny


def save_diffusers(pipe: Any, dest: Path) -> Path:
    pipe.save_pretrained(str(dest), safe_serialization=True)
    return dest


def save_single_file(pipe: Any, arch: str, dest: Path, *, embed_configs: bool = True) -> Path:
    """An A1111/ComfyUI-layout .safetensors (model.diffusion_model.*, first_stage_model.*,
    cond_stage_model.*) of `pipe`; tiny models carry their diffusers configs as metadata."""
    from safetensors.torch import save_file

    from sepme_engine.models.configs import CONFIGS_METADATA_KEY, pipeline_configs
    from sepme_engine.models.ldm_keys import pipeline_to_ldm

    state = {k: v.contiguous() for k, v in pipeline_to_ldm(pipe, arch).items()}
    meta = {CONFIGS_METADATA_KEY: json.dumps(pipeline_configs(pipe))} if embed_configs else {}
    save_file(state, str(dest), metadata=meta)
    return dest


def tiny(arch: str = "sd1", seed: int = 0, max_length: int = 77) -> Any:
    """The session's shared tiny pipeline: read-only (conftest checks), deepcopy to change it."""
    return shared_tiny(arch, seed=seed, max_length=max_length)


def state_of(pipe: Any) -> dict[str, Any]:
    out = {}
    for comp in ("unet", "vae", "text_encoder"):
        for k, v in getattr(pipe, comp).state_dict().items():
            out[f"{comp}.{k}"] = v
    return out
