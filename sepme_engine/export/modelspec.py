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

from sepme_engine.models.arch import arch_facts, normalize_prediction_type

# The per-architecture IDs (`modelspec.architecture`, kohya's `ss_base_model_version`) live in
# the architecture table, `sepme_engine.models.arch.ARCHS`.
HASH_KEY = "modelspec.hash_sha256"

IMPL_LDM = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"


def modelspec_prediction(prediction_type: str) -> str:
    """The modelspec spelling of a prediction type: "epsilon" or "v" (diffusers' "v_prediction"
    is sepme's own spelling; see `arch.normalize_prediction_type`)."""
    return "v" if normalize_prediction_type(prediction_type) == "v_prediction" else "epsilon"


def erased_description(erased: Sequence[str], arch: str = "sd1") -> str:
    model = arch_facts(arch).model_name
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

    `arch` is a key of `models.arch.ARCHS`; `prediction_type` (either spelling) defaults to the
    arch's and is written the modelspec way ("v" for sd2-v); `resolution` defaults to the arch's
    native size ("768x768" for sd2-v); `date` to today (ISO-8601); `description` to one listing
    the erased concepts.
    """
    facts = arch_facts(arch)
    pred = modelspec_prediction(prediction_type or facts.prediction_type)
    architecture = facts.modelspec_lora_architecture if lora else facts.modelspec_architecture
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": IMPL_DIFFUSERS if lora else IMPL_LDM,
        "modelspec.title": title,
        "modelspec.description": description or erased_description(erased, arch),
        "modelspec.date": date or _dt.date.today().isoformat(),
        "modelspec.resolution": resolution or facts.resolution,
        "modelspec.prediction_type": pred,
    }
