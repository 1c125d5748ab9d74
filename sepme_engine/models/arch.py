"""The architecture table, dtype names, the cross-attention K/V layers of a UNet, and device resolution.

Importable without torch (torch is imported inside the functions that need it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sepme_engine.errors import DeviceUnavailable, InvalidInput

if TYPE_CHECKING:
    import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")
# Precisions sepme names with short words: short name -> torch dtype attribute. Aliases accepted
# wherever a dtype is read (`dtype_name`).
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
VAE_SCALE = 8  # latent side = image side / 8 for every SD VAE


@dataclass(frozen=True)
class ArchFacts:
    """Everything sepme knows about one supported architecture (figures are the real models').

    This table is the one place an architecture is listed: detection, loading, the shipped
    configs, the LDM key maps, export metadata (modelspec, kohya) and the settings tables read
    their per-architecture facts from it, so a new architecture is one entry (plus its shipped
    config folder).
    """

    name: str  # "sd1" | "sd2" | "sd2-v" | "sdxl"
    label: str
    # The layout detection recognises (text encoder + UNet); archs of one family differ only in
    # their prediction type, and such an arch pins it (`pins_prediction_type`).
    family: str  # "sd1" | "sd2" | "sdxl"
    # "clip" (OpenAI CLIP ViT-L/14) | "open_clip" (OpenCLIP ViT-H/14) | "clip+open_clip" (SDXL:
    # CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, penultimate hidden states concatenated); also
    # picks the text-encoder layout of the LDM key map
    text_encoder: str
    text_width: int  # cross-attention / text-embedding width
    pad_token: (
        str  # tokenizer padding token (SDXL: the second tokenizer's; the first pads with eos)
    )
    prediction_type: str  # "epsilon" | "v_prediction"
    sample_size: int  # UNet latent size (image size / 8)
    shipped_config: str  # folder under sepme_engine/models/shipped/
    use_linear_projection: bool  # SD2 transformers use linear proj_in/out, SD1 1x1 convs
    pipeline: str  # the diffusers pipeline class
    modelspec_architecture: str  # SAI model spec `modelspec.architecture` of a full checkpoint
    kohya_base_version: str  # kohya's `ss_base_model_version` of a LoRA
    model_name: str  # how export descriptions name the model
    # LoRA key names: "diffusers" module paths (SD 1.x/2.x) or "ldm" ones (kohya's SDXL names)
    lora_key_names: str = "diffusers"
    n_cross_attn_layers: int = 16  # attn2 modules in the real UNet (x2 for to_k and to_v)

    @property
    def resolution(self) -> str:
        """The native image size, "WxH" (modelspec.resolution)."""
        side = self.sample_size * VAE_SCALE
        return f"{side}x{side}"

    @property
    def modelspec_lora_architecture(self) -> str:
        """`modelspec.architecture` of a LoRA for this arch (the spec appends `/lora`)."""
        return f"{self.modelspec_architecture}/lora"

    @property
    def n_text_encoders(self) -> int:
        """1 (SD 1.x / 2.x) or 2 (SDXL: `text_encoder` and `text_encoder_2`)."""
        return len(self.text_encoder.split("+"))

    @property
    def pins_prediction_type(self) -> bool:
        """Whether choosing this arch fixes the prediction type (its family has several)."""
        return sum(a.family == self.family for a in ARCHS.values()) > 1


_SD2 = ArchFacts(
    name="sd2",
    label="Stable Diffusion 2.x (512, epsilon)",
    family="sd2",
    text_encoder="open_clip",
    text_width=1024,
    pad_token="!",
    prediction_type="epsilon",
    sample_size=64,
    shipped_config="sd21-base",
    use_linear_projection=True,
    pipeline="StableDiffusionPipeline",
    modelspec_architecture="stable-diffusion-v2-512",
    kohya_base_version="sd_v2",
    model_name="Stable Diffusion",
)


ARCHS: dict[str, ArchFacts] = {
    "sd1": ArchFacts(
        name="sd1",
        label="Stable Diffusion 1.x",
        family="sd1",
        text_encoder="clip",
        text_width=768,
        pad_token="<|endoftext|>",
        prediction_type="epsilon",
        sample_size=64,
        shipped_config="sd15",
        use_linear_projection=False,
        pipeline="StableDiffusionPipeline",
        modelspec_architecture="stable-diffusion-v1",
        # kohya: `model_util.get_model_version_str_for_sd1_sd2`, "sd" + "_v1" | "_v2" (+ "_v")
        kohya_base_version="sd_v1",
        model_name="Stable Diffusion",
    ),
    "sd2": _SD2,
    # the same family at 768 px with v-prediction: only what differs
    "sd2-v": replace(
        _SD2,
        name="sd2-v",
        label="Stable Diffusion 2.x (768, v-prediction)",
        prediction_type="v_prediction",
        sample_size=96,
        shipped_config="sd21",
        modelspec_architecture="stable-diffusion-v2-768-v",
        kohya_base_version="sd_v2_v",
    ),
    "sdxl": ArchFacts(
        name="sdxl",
        label="Stable Diffusion XL (base 1.0)",
        family="sdxl",
        text_encoder="clip+open_clip",
        text_width=2048,
        pad_token="!",
        prediction_type="epsilon",
        sample_size=128,
        shipped_config="sdxl-base",
        use_linear_projection=True,
        pipeline="StableDiffusionXLPipeline",
        modelspec_architecture="stable-diffusion-xl-v1-base",
        # kohya: `sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0`
        kohya_base_version="sdxl_base_v1-0",
        model_name="Stable Diffusion XL",
        lora_key_names="ldm",
        # transformer depth 2 (level 1, 2 + 3 layers) and 10 (level 2, 2 + 3 layers; mid 10)
        n_cross_attn_layers=70,
    ),
}
FAMILIES = tuple(dict.fromkeys(a.family for a in ARCHS.values()))


def arch_facts(arch: str) -> ArchFacts:
    """The table entry of `arch`; InvalidInput naming the known ones otherwise."""
    facts = ARCHS.get(arch)
    if facts is None:
        raise InvalidInput(f"unknown architecture {arch!r}", hint=f"use one of: {', '.join(ARCHS)}")
    return facts


def arch_for(family: str, prediction_type: str) -> str:
    """The arch of a detected family ("sd1" | "sd2" | "sdxl") and prediction type: the family's
    entry with that prediction type, else its first entry (an SD 1.x or SDXL v-prediction model
    keeps its arch, with a v scheduler)."""
    members = [a for a in ARCHS.values() if a.family == family]
    if not members:
        raise InvalidInput(
            f"unknown model family {family!r}", hint=f"use one of: {', '.join(FAMILIES)}"
        )
    pred = normalize_prediction_type(prediction_type)
    return next((a.name for a in members if a.prediction_type == pred), members[0].name)


def normalize_prediction_type(value: str) -> str:
    """The one spelling sepme uses inside: diffusers' "epsilon" | "v_prediction". Accepts
    "eps" and "v" / "v-prediction" / "vpred" (modelspec writes "v"), any case."""
    v = value.strip().lower().replace("-", "_")
    if v in ("epsilon", "eps"):
        return "epsilon"
    if v in ("v_prediction", "v", "vpred", "v_pred"):
        return "v_prediction"
    raise InvalidInput(
        f"unknown prediction type {value!r}",
        hint="use 'epsilon' or 'v_prediction'",
    )


def dtype_name(value: Any) -> str:
    """The short name ("fp32" | "fp16" | "bf16") of a dtype given as a short name, a long one
    ("float16", "half", "bfloat16", "float32") or a torch.dtype; InvalidInput otherwise."""
    text = str(value).removeprefix("torch.") if not isinstance(value, str) else value
    key = _DTYPE_ALIASES.get(text, text)
    if key not in DTYPES:
        raise InvalidInput(f"unsupported dtype {value!r}", hint="use fp16, bf16 or fp32")
    return key


def torch_dtype(value: Any) -> torch.dtype:
    """The torch dtype of a short or long dtype name (see `dtype_name`)."""
    import torch

    dt = getattr(torch, DTYPES[dtype_name(value)])
    assert isinstance(dt, torch.dtype)
    return dt


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
                hint="use the CPU, or install a CUDA build of torch",
                kind="cuda",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"no CUDA device {dev.index} (this machine has {torch.cuda.device_count()})",
                hint="pick an existing index, or the default CUDA device",
                kind="cuda-index",
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailable(
                "Apple MPS is not available on this machine", hint="use the CPU", kind="mps"
            )
    elif dev.type != "cpu":
        raise DeviceUnavailable(
            f"device type {dev.type!r} is not supported", hint="use auto, cpu, cuda or mps"
        )
    return dev


__all__ = [
    "ARCHS",
    "DTYPES",
    "FAMILIES",
    "PREDICTION_TYPES",
    "ArchFacts",
    "arch_facts",
    "arch_for",
    "dtype_name",
    "torch_dtype",
    "cross_attention_kv",
    "layer_sort_key",
    "normalize_prediction_type",
    "resolve_device",
]
