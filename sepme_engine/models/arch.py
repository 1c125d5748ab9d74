"""Per-architecture facts, the cross-attention K/V layers of a UNet, and device resolution.

Importable without torch (torch is imported inside the functions that need it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sepme_engine.errors import DeviceUnavailable, InvalidInput

if TYPE_CHECKING:
    import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class ArchFacts:
    """What sepme knows about one supported architecture (figures are the real models')."""

    name: str  # "sd1" | "sd2" | "sd2-v" | "sdxl"
    label: str
    # "clip" (OpenAI CLIP ViT-L/14) | "open_clip" (OpenCLIP ViT-H/14) | "clip+open_clip" (SDXL:
    # CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, penultimate hidden states concatenated)
    text_encoder: str
    text_width: int  # cross-attention / text-embedding width
    pad_token: (
        str  # tokenizer padding token (SDXL: the second tokenizer's; the first pads with eos)
    )
    prediction_type: str  # "epsilon" | "v_prediction"
    sample_size: int  # UNet latent size (image size / 8)
    shipped_config: str  # folder under sepme_engine/models/shipped/
    use_linear_projection: bool  # SD2 transformers use linear proj_in/out, SD1 1x1 convs
    n_cross_attn_layers: int = 16  # attn2 modules in the real UNet (x2 for to_k and to_v)


ARCHS: dict[str, ArchFacts] = {
    "sd1": ArchFacts(
        name="sd1",
        label="Stable Diffusion 1.x",
        text_encoder="clip",
        text_width=768,
        pad_token="<|endoftext|>",
        prediction_type="epsilon",
        sample_size=64,
        shipped_config="sd15",
        use_linear_projection=False,
    ),
    "sd2": ArchFacts(
        name="sd2",
        label="Stable Diffusion 2.x (512, epsilon)",
        text_encoder="open_clip",
        text_width=1024,
        pad_token="!",
        prediction_type="epsilon",
        sample_size=64,
        shipped_config="sd21-base",
        use_linear_projection=True,
    ),
    "sd2-v": ArchFacts(
        name="sd2-v",
        label="Stable Diffusion 2.x (768, v-prediction)",
        text_encoder="open_clip",
        text_width=1024,
        pad_token="!",
        prediction_type="v_prediction",
        sample_size=96,
        shipped_config="sd21",
        use_linear_projection=True,
    ),
    "sdxl": ArchFacts(
        name="sdxl",
        label="Stable Diffusion XL (base 1.0)",
        text_encoder="clip+open_clip",
        text_width=2048,
        pad_token="!",
        prediction_type="epsilon",
        sample_size=128,
        shipped_config="sdxl-base",
        use_linear_projection=True,
        # transformer depth 2 (level 1, 2 + 3 layers) and 10 (level 2, 2 + 3 layers; mid 10)
        n_cross_attn_layers=70,
    ),
}


def arch_for(family: str, prediction_type: str) -> str:
    """ "sd1" / "sd2" / "sd2-v" / "sdxl" from a family ("sd1" | "sd2" | "sdxl") and a prediction
    type (SDXL base is epsilon; a v-prediction SDXL keeps arch sdxl with a v scheduler)."""
    if family in ("sd1", "sdxl"):
        return family
    return "sd2-v" if prediction_type == "v_prediction" else "sd2"


def normalize_prediction_type(value: str) -> str:
    """Accept "epsilon"/"eps" and "v_prediction"/"v"/"v-prediction"; return the diffusers name."""
    v = value.strip().lower().replace("-", "_")
    if v in ("epsilon", "eps"):
        return "epsilon"
    if v in ("v_prediction", "v", "vpred", "v_pred"):
        return "v_prediction"
    raise InvalidInput(
        f"unknown prediction type {value!r}",
        hint="use 'epsilon' or 'v_prediction'",
    )


def layer_sort_key(name: str) -> tuple[Any, ...]:
    """Canonical order of module names: natural sort (numbers compared as numbers)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def cross_attention_kv(unet: Any) -> list[tuple[str, torch.nn.Linear]]:
    """The to_k / to_v Linear of every cross-attention (attn2) module, canonically sorted.

    Names are diffusers module names, e.g.
    `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`.
    """
    import torch

    out = [
        (name, mod)
        for name, mod in unet.named_modules()
        if isinstance(mod, torch.nn.Linear) and re.search(r"\.attn2\.to_[kv]$", name)
    ]
    return sorted(out, key=lambda item: layer_sort_key(item[0]))


def resolve_device(device: Any) -> torch.device:
    """ "auto" -> cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    name = str(device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise InvalidInput(
            f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:N or mps"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                "CUDA is not available on this machine",
                hint="use --device cpu (or auto), or install a CUDA build of torch",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"no CUDA device {dev.index} (this machine has {torch.cuda.device_count()})",
                hint="pick an existing index, or use --device cuda",
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailable(
                "Apple MPS is not available on this machine", hint="use --device cpu (or auto)"
            )
    elif dev.type != "cpu":
        raise DeviceUnavailable(
            f"device type {dev.type!r} is not supported", hint="use auto, cpu, cuda or mps"
        )
    return dev


__all__ = [
    "ARCHS",
    "PREDICTION_TYPES",
    "ArchFacts",
    "arch_for",
    "cross_attention_kv",
    "layer_sort_key",
    "normalize_prediction_type",
    "resolve_device",
]
