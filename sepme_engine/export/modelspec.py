"""SAI model spec (`modelspec.*`) metadata for exported files.

Spec: https://github.com/Stability-AI/ModelSpec (sai_model_spec 1.0.0). Architecture IDs follow its
listing; an adapter appends `/` and its kind, as kohya's sd-scripts (`library/sai_model_spec.py`)
write it and Forge reads it: `stable-diffusion-v1/lora`, `stable-diffusion-v2-768-v/lora`.
`modelspec.hash_sha256` ("0x" + the SHA-256 of the tensor data, header excluded, as kohya and the
spec's reference code compute it) is filled in by the writer while it streams.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from sepme_engine.errors import InvalidInput

ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")

ARCHITECTURE_IDS = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}
DEFAULT_RESOLUTION = {"sd1": "512x512", "sd2": "512x512", "sd2-v": "768x768", "sdxl": "1024x1024"}
DEFAULT_PREDICTION = {"sd1": "epsilon", "sd2": "epsilon", "sd2-v": "v", "sdxl": "epsilon"}
# kohya's ss_base_model_version values for SD 1.x / 2.x networks
# (`model_util.get_model_version_str_for_sd1_sd2`: "sd" + "_v1" | "_v2", + "_v" when v-param.)
# (SDXL: `sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0` = "sdxl_base_v1-0")
KOHYA_BASE_VERSION = {
    "sd1": "sd_v1",
    "sd2": "sd_v2",
    "sd2-v": "sd_v2_v",
    "sdxl": "sdxl_base_v1-0",
}
ADAPTER_LORA = "lora"
HASH_KEY = "modelspec.hash_sha256"

IMPL_LDM = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise InvalidInput(f"unknown architecture {arch!r}", hint=f"use one of: {', '.join(ARCHS)}")
    return arch


def normalize_prediction_type(prediction_type: str) -> str:
    """modelspec spelling: "v" or "epsilon" (accepts diffusers' "v_prediction")."""
    p = {"v_prediction": "v", "v": "v", "epsilon": "epsilon", "eps": "epsilon"}.get(prediction_type)
    if p is None:
        raise InvalidInput(
            f"unsupported prediction type {prediction_type!r}",
            hint="Stable Diffusion 1.x/2.x predict epsilon or v",
        )
    return p


def erased_description(erased: Sequence[str], arch: str = "sd1") -> str:
    model = "Stable Diffusion XL" if arch == "sdxl" else "Stable Diffusion"
    if not erased:
        return f"{model} exported by sepme with no concept erased."
    names = ", ".join(erased)
    return f"{model} with concepts erased by sepme (SepME): {names}."


def modelspec_metadata(
    arch: str,
    prediction_type: str | None = None,
    title: str = "sepme export",
    erased: Sequence[str] = (),
    resolution: str | None = None,
    *,
    lora: bool = False,
    date: str | None = None,
    description: str | None = None,
) -> dict[str, str]:
    """The `modelspec.*` keys for an exported checkpoint (or, with `lora=True`, a LoRA).

    `arch` is "sd1" | "sd2" | "sd2-v" | "sdxl"; `prediction_type` defaults to the arch's ("v" for sd2-v);
    `resolution` defaults to "512x512" ("768x768" for sd2-v); `date` to today (ISO-8601);
    `description` to one listing the erased concepts.
    """
    check_arch(arch)
    pred = normalize_prediction_type(prediction_type or DEFAULT_PREDICTION[arch])
    architecture = ARCHITECTURE_IDS[arch] + (f"/{ADAPTER_LORA}" if lora else "")
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": IMPL_DIFFUSERS if lora else IMPL_LDM,
        "modelspec.title": title,
        "modelspec.description": description or erased_description(erased, arch),
        "modelspec.date": date or _dt.date.today().isoformat(),
        "modelspec.resolution": resolution or DEFAULT_RESOLUTION[arch],
        "modelspec.prediction_type": pred,
    }
