"""Recognise a base model source and its architecture without loading weights.

Sources: a diffusers pipeline folder, an A1111/ComfyUI single-file checkpoint (`.safetensors`;
pickle `.ckpt/.pt/.pth/.bin` only with `allow_pickle=True`), or a Hugging Face hub id (or one of
the short names in `KNOWN_BASES`). For safetensors only the header is read (tensor names, dtypes,
shapes, metadata), so inspecting a multi-GB file is instant; the header is checked against the
file size, so truncated or corrupt files raise `CorruptEntry`.

Prediction-type rule (first that applies, recorded in `SourceInfo.prediction_source`):
1. the explicit `prediction_type` argument ("override");
2. the file's own config: a diffusers folder's or hub repo's `scheduler_config.json`, or the
   scheduler in a sepme file's embedded `sepme.configs` ("config");
3. safetensors metadata `modelspec.prediction_type`, then `modelspec.architecture`
   (`...-v2-768-v` -> v, `...-v2-512` -> epsilon) ("metadata");
4. a `v_pred` key in the state dict (ComfyUI's marker) ("v_pred key");
5. SD 1.x: always epsilon ("default");
6. SD 2.x: the weights, as ComfyUI decides (`supported_models.SD20.model_type`): v-prediction
   when the population standard deviation of
   `model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias` exceeds 0.09
   (the 768-v models train it far from its zero init; the 512 epsilon models do not) ("weights");
   the file name plays no part;
7. otherwise epsilon ("default", with a note).

Text-encoder layouts: the standard `cond_stage_model.transformer.text_model.*` (SD 1.x) and
`cond_stage_model.model.*` (SD 2.x), the original CompVis `cond_stage_model.transformer.*` without
`text_model.`, and the generative-models (SGM) `conditioner.embedders.0.{transformer.text_model,
model}.*` of single-embedder files such as SD 2.1-Turbo (`ldm_keys.TEXT_LAYOUTS`);
`SourceInfo.text_prefix` records which, and the loader renames it to the standard one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.errors import (
    CorruptEntry,
    InvalidInput,
    NotFound,
    OfflineError,
    PickleRefused,
    UnsupportedModel,
)
from sepme_engine.models.arch import ARCHS, arch_for, layer_sort_key, normalize_prediction_type
from sepme_engine.models.configs import (
    CONFIGS_METADATA_KEY,
    KNOWN_PROFILES,
    MODEL_INDEX_KEY,
    PROFILE_METADATA_KEY,
    validate_configs,
)
from sepme_engine.models.ldm_keys import (
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ldm_unet_to_diffusers,
    text_layout,
)
from sepme_engine.safetensors_header import read_header

KNOWN_BASES: dict[str, str] = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2-base": "stabilityai/stable-diffusion-2-base",
    "sd2": "stabilityai/stable-diffusion-2",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}

# The original runwayml repo left the hub; a local cache may still hold it under that name.
HUB_CACHE_ALIASES: dict[str, tuple[str, ...]] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("runwayml/stable-diffusion-v1-5",),
    "runwayml/stable-diffusion-v1-5": ("stable-diffusion-v1-5/stable-diffusion-v1-5",),
}

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REDOWNLOAD = "the file is damaged or incomplete: download or copy it again"


@dataclass(frozen=True)
class SourceInfo:
    """What `inspect_source` found. `cross_attn_layers` are diffusers module names with the
    (out, in) shape of their weight, canonically sorted (`arch.layer_sort_key`)."""

    kind: str  # "diffusers" | "single_file" | "hub"
    source: str  # as given
    path: Path | None  # the folder or file (None for a hub id)
    hub_id: str | None  # the resolved repo id (None for local sources)
    arch: str  # "sd1" | "sd2" | "sd2-v" | "sdxl"
    prediction_type: str  # "epsilon" | "v_prediction"
    prediction_source: (
        str  # "override" | "config" | "metadata" | "v_pred key" | "weights" | "default"
    )
    text_width: int
    cross_attn_layers: tuple[tuple[str, tuple[int, int]], ...]
    tokenizer_max_length: int
    sample_size: int
    has_embedded_config: bool
    file_format: str  # "safetensors" | "pickle" | "diffusers"
    notes: tuple[str, ...] = ()
    # single files: the text encoder's key prefix in the file (ldm_keys.TEXT_LAYOUTS)
    text_prefix: str = ""
    # a sepme export's recorded settings profile ("toy" for an export of the toy base), or ""
    profile: str = ""

    @property
    def family(self) -> str:
        return ARCHS[self.arch].family


# ---------------------------------------------------------------------------------------------
# safetensors headers


def read_safetensors_header(
    path: Path,
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """Tensor name -> (dtype, shape), and the string metadata, from a safetensors file's header.

    The store's header reader checks that every tensor's byte range is consistent with its dtype
    and shape and lies in the file, so a truncated download is caught here (CorruptEntry).
    """
    header, metadata = read_header(Path(path))
    tensors = {
        name: (str(spec["dtype"]), tuple(int(s) for s in spec["shape"]))
        for name, spec in header.items()
    }
    return tensors, metadata


def load_pickle_state_dict(path: Path) -> dict[str, Any]:
    """A pickle checkpoint's tensors via torch.load(weights_only=True); unwraps "state_dict"."""
    import pickle

    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PickleRefused(
            f"{path.name} holds objects other than tensors; refusing to unpickle them: {e}",
            hint="convert it to .safetensors with a tool you trust",
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CorruptEntry(
            f"{path.name} is not a readable torch checkpoint: {e}", hint=_REDOWNLOAD
        ) from e
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CorruptEntry(f"{path.name} does not hold a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------------------------
# single-file (LDM layout) detection


def _unsupported_from_keys(keys: list[str], metadata: Mapping[str, str]) -> str | None:
    """A description of a recognised-but-unsupported model, or None."""

    def has(pred: Any) -> bool:
        return any(pred(k) for k in keys)

    if has(lambda k: k.startswith(UNET_PREFIX + "label_emb.")) and not has(
        lambda k: k.startswith(SDXL_OPENCLIP_PREFIX)
    ):
        return "an SDXL refiner checkpoint (label_emb keys, one OpenCLIP text encoder)"
    if has(lambda k: "joint_blocks." in k):
        return "a Stable Diffusion 3 checkpoint (joint_blocks.* keys)"
    if has(lambda k: "double_blocks." in k):
        return "a Flux checkpoint (double_blocks.* keys)"
    if has(lambda k: "lora_" in k or ".lora." in k):
        return "a LoRA (lora_* keys), not a full model"
    if has(lambda k: k.startswith("control_model.")):
        return "a ControlNet checkpoint"
    if has(lambda k: k.startswith(("down_blocks.", "mid_block.", "up_blocks."))):
        return "a diffusers-format UNet file, not a full A1111/ComfyUI checkpoint (pass the diffusers folder instead)"
    arch = metadata.get("modelspec.architecture", "")
    if "refiner" in arch or "sd3" in arch or "flux" in arch:
        return f"a {arch} model (modelspec.architecture)"
    return None


def _ldm_info(
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str],
    path: Path,
    file_format: str,
    override: str | None,
    read_tensor: Callable[[str], list[float] | None] | None = None,
) -> SourceInfo:
    keys = list(shapes)
    if not keys:
        raise CorruptEntry(f"{path.name} holds no tensors")
    what = _unsupported_from_keys(keys, metadata)
    if what:
        raise UnsupportedModel(
            f"{path.name} is {what}; sepme supports Stable Diffusion 1.x, 2.x and SDXL base",
            hint="use an SD 1.x / 2.x / SDXL base checkpoint or diffusers folder",
        )
    parts = {
        "UNet (model.diffusion_model.*)": (UNET_PREFIX,),
        "VAE (first_stage_model.*)": (VAE_PREFIX,),
        "text encoder (cond_stage_model.*)": ("cond_stage_model.", "conditioner.embedders.0."),
    }
    missing = [label for label, ps in parts.items() if not any(k.startswith(ps) for k in keys)]
    if missing:
        sample = ", ".join(sorted(keys)[:3])
        raise UnsupportedModel(
            f"{path.name} is not a full SD checkpoint: it lacks the {' and the '.join(missing)} (keys start: {sample})",
            hint="pass a complete A1111/ComfyUI checkpoint or a diffusers folder",
        )
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise UnsupportedModel(
            f"{path.name} has a UNet with {conv_in[1]} input channels (an inpainting or "
            "instruct-pix2pix model); sepme supports text-to-image SD 1.x / 2.x",
        )
    layout = text_layout(keys)
    if SDXL_OPENCLIP_PREFIX + "token_embedding.weight" in shapes:
        if SDXL_CLIP_PREFIX + "embeddings.token_embedding.weight" not in shapes:
            raise UnsupportedModel(
                f"{path.name} has an SDXL OpenCLIP text encoder but no CLIP ViT-L one "
                f"({SDXL_CLIP_PREFIX}*)",
                hint="pass a complete SDXL base checkpoint or its diffusers folder",
            )
        layout = (SDXL_CLIP_PREFIX, "sdxl", SDXL_CLIP_PREFIX)
    if layout is None:
        raise UnsupportedModel(
            f"{path.name}: unrecognised text encoder (neither OpenAI CLIP "
            "cond_stage_model.transformer.* nor OpenCLIP cond_stage_model.model.*)",
        )
    text_prefix, family, _ = layout
    if family in ("sd1", "sdxl"):
        tok_key = text_prefix + "embeddings.token_embedding.weight"
        pos_key = text_prefix + "embeddings.position_embedding.weight"
    else:
        tok_key = text_prefix + "token_embedding.weight"
        pos_key = text_prefix + "positional_embedding"

    notes: list[str] = []
    configs: dict[str, Any] | None = None
    if CONFIGS_METADATA_KEY in metadata:
        try:
            configs = validate_configs(json.loads(metadata[CONFIGS_METADATA_KEY]))
        except json.JSONDecodeError as e:
            raise CorruptEntry(
                f"{path.name}: metadata {CONFIGS_METADATA_KEY} is not JSON: {e}"
            ) from e

    kv_ldm = [
        k for k in keys if k.startswith(UNET_PREFIX) and re.search(r"\.attn2\.to_[kv]\.weight$", k)
    ]
    if not kv_ldm:
        raise UnsupportedModel(f"{path.name}: the UNet has no cross-attention (attn2) layers")
    try:  # the topology (layers per block) comes from every UNet key, not the attn2 ones alone
        names = ldm_unet_to_diffusers([k for k in keys if k.startswith(UNET_PREFIX)])
    except ValueError as e:
        raise UnsupportedModel(f"{path.name}: unrecognised UNet layout: {e}") from e
    layers = tuple(
        sorted(
            ((names[k][: -len(".weight")], (int(shapes[k][0]), int(shapes[k][1]))) for k in kv_ldm),
            key=lambda item: layer_sort_key(item[0]),
        )
    )
    text_width = layers[0][1][1]
    token_width = int(shapes[tok_key][-1])
    if family == "sdxl":
        token_width += int(shapes[SDXL_OPENCLIP_PREFIX + "token_embedding.weight"][-1])
    if token_width != text_width:
        notes.append(
            f"text encoder width {token_width} differs from cross-attention width {text_width}"
        )
    max_len = int(shapes[pos_key][0]) if pos_key in shapes else 77

    pred, source = _prediction_for_file(
        family, override, configs, metadata, keys, notes, read_tensor
    )
    arch = arch_for(family, pred)
    if configs is not None:
        sample_size = int(configs["unet"].get("sample_size", ARCHS[arch].sample_size))
        max_len = int(configs["tokenizer"].get("clip", {}).get("max_length", max_len))
    else:
        sample_size = ARCHS[arch].sample_size
        if text_width != ARCHS[arch].text_width or (conv_in is not None and conv_in[0] != 320):
            notes.append(
                "non-standard layer sizes and no embedded sepme configs: the shipped "
                f"{ARCHS[arch].shipped_config} config will not fit"
            )
    return SourceInfo(
        kind="single_file",
        source=str(path),
        path=path,
        hub_id=None,
        arch=arch,
        prediction_type=pred,
        prediction_source=source,
        text_width=text_width,
        cross_attn_layers=layers,
        tokenizer_max_length=max_len,
        sample_size=sample_size,
        has_embedded_config=configs is not None,
        file_format=file_format,
        notes=tuple(notes),
        text_prefix=text_prefix,
        profile=_recorded_profile(metadata.get(PROFILE_METADATA_KEY), notes),
    )


def _recorded_profile(value: Any, notes: list[str]) -> str:
    """The settings profile a sepme export recorded ("toy" or an architecture), else ""."""
    if value is None or value == "":
        return ""
    if value in KNOWN_PROFILES:
        return str(value)
    notes.append(f"ignored unknown recorded profile {value!r}")
    return ""


# ComfyUI's test for SD 2.x v-prediction (comfy/supported_models.py, SD20.model_type)
V_PRED_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD = 0.09


def _population_std(values: list[float]) -> float:
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def safetensors_tensor_values(path: Path, name: str, limit: int = 1 << 16) -> list[float] | None:
    """The values of one small floating tensor of a safetensors file, read without torch
    (None when absent, not F32/F16/BF16, or larger than `limit` elements)."""
    import struct

    header, _ = read_header(Path(path))
    spec = header.get(name)
    if spec is None:
        return None
    dtype = str(spec["dtype"])
    begin, end = (int(x) for x in spec["data_offsets"])
    size = {"F32": 4, "F16": 2, "BF16": 2}.get(dtype)
    if size is None or (end - begin) // size > limit:
        return None
    with Path(path).open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n + begin)
        raw = fh.read(end - begin)
    count = len(raw) // size
    if dtype == "F32":
        return list(struct.unpack(f"<{count}f", raw))
    if dtype == "F16":
        return list(struct.unpack(f"<{count}e", raw))
    # bfloat16: the high half of a float32
    widened = b"".join(b"\x00\x00" + raw[i : i + 2] for i in range(0, len(raw), 2))
    return list(struct.unpack(f"<{count}f", widened))


def _prediction_for_file(
    family: str,
    override: str | None,
    configs: Mapping[str, Any] | None,
    metadata: Mapping[str, str],
    keys: list[str],
    notes: list[str],
    read_tensor: Callable[[str], list[float] | None] | None,
) -> tuple[str, str]:
    if override is not None:
        return override, "override"
    if configs is not None and configs["scheduler"].get("prediction_type"):
        return normalize_prediction_type(str(configs["scheduler"]["prediction_type"])), "config"
    spec_pred = metadata.get("modelspec.prediction_type")
    if spec_pred:
        try:
            return normalize_prediction_type(spec_pred), "metadata"
        except InvalidInput:
            notes.append(f"ignored unknown modelspec.prediction_type {spec_pred!r}")
    spec_arch = metadata.get("modelspec.architecture", "").split("/")[0]
    if spec_arch.startswith("stable-diffusion-v2") or spec_arch.startswith("stable-diffusion-v1"):
        return ("v_prediction" if spec_arch.endswith("-v") else "epsilon"), "metadata"
    if "v_pred" in keys:
        return "v_prediction", "v_pred key"
    members = [a for a in ARCHS.values() if a.family == family]
    if len(members) == 1:  # SD 1.x, SDXL base: v-prediction derivatives say so in metadata
        return members[0].prediction_type, "default"
    values = read_tensor(V_PRED_PROBE) if read_tensor is not None else None
    if values:
        std = _population_std(values)
        pred = "v_prediction" if std > V_PRED_STD else "epsilon"
        notes.append(
            f"SD 2.x prediction type read from the weights ({pred}: std of "
            f"output_blocks.11 norm1.bias {std:.3f} {'>' if std > V_PRED_STD else '<='} "
            f"{V_PRED_STD}, as ComfyUI decides); pass --prediction-type if that is wrong"
        )
        return pred, "weights"
    notes.append(
        "SD 2.x prediction type unknown: assumed epsilon (2.x-base, 512px); "
        "pass prediction_type='v_prediction' for a 768px v-model"
    )
    return "epsilon", "default"


# ---------------------------------------------------------------------------------------------
# diffusers folders and hub ids


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CorruptEntry(f"{path} is missing", hint="the diffusers folder is incomplete") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptEntry(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CorruptEntry(f"{path} is not a JSON object")
    return data


def _weights_format(folder: Path, allow_pickle: bool, check_weights: bool) -> list[str]:
    """Check each model component has weights; refuse pickle-only components without the flag."""
    notes: list[str] = []
    if not check_weights:
        return notes
    for comp in ("unet", "vae", "text_encoder"):
        d = folder / comp
        st = list(d.glob("*.safetensors")) + list(d.glob("*.safetensors.index.json"))
        pk = [p for p in d.glob("*") if p.suffix in PICKLE_SUFFIXES]
        if st:
            continue
        if pk:
            if not allow_pickle:
                raise PickleRefused(
                    f"{folder.name}/{comp} has only pickle weights ({pk[0].name}); pickle files can run code when loaded",
                    hint="convert them to .safetensors",
                    kind="pickle",
                )
            notes.append(f"{comp}: pickle weights loaded with weights_only=True")
            continue
        raise CorruptEntry(
            f"{folder.name}/{comp} has no weights", hint="the diffusers folder is incomplete"
        )
    return notes


def _unet_layers_from_folder(
    folder: Path, unet_cfg: dict[str, Any]
) -> tuple[tuple[str, tuple[int, int]], ...]:
    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        shapes, _ = read_safetensors_header(st)
        found = [
            (k[: -len(".weight")], (int(s[0]), int(s[1])))
            for k, (_, s) in shapes.items()
            if re.search(r"\.attn2\.to_[kv]\.weight$", k)
        ]
        return tuple(sorted(found, key=lambda item: layer_sort_key(item[0])))
    return _unet_layers_from_config(unet_cfg)


def _unet_layers_from_config(unet_cfg: dict[str, Any]) -> tuple[tuple[str, tuple[int, int]], ...]:
    """Instantiate the UNet on the meta device (no memory, no weights) to list its layers."""
    import torch
    from diffusers import UNet2DConditionModel

    from sepme_engine.models.arch import cross_attention_kv

    cfg = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    return tuple(
        (n, (int(m.weight.shape[0]), int(m.weight.shape[1]))) for n, m in cross_attention_kv(unet)
    )


def _config_folder_info(
    folder: Path,
    *,
    kind: str,
    source: str,
    hub_id: str | None,
    override: str | None,
    allow_pickle: bool,
    check_weights: bool,
) -> SourceInfo:
    index = _read_json(folder / "model_index.json")
    cls = str(index.get("_class_name", ""))
    if cls == "StableDiffusionXLPipeline" and index.get("text_encoder", [None])[0] is None:
        raise UnsupportedModel(
            f"{source} is an SDXL pipeline without the CLIP ViT-L text encoder (a refiner?); "
            "sepme supports SDXL base",
            hint="use the SDXL base model",
        )
    other_xl = "XL" in cls and cls != "StableDiffusionXLPipeline"  # refiner, img2img, ...
    if other_xl or "StableDiffusion3" in cls or "Flux" in cls or cls.startswith("Kandinsky"):
        raise UnsupportedModel(
            f"{source} is a {cls}; sepme supports Stable Diffusion 1.x, 2.x and SDXL base",
            hint="use an SD 1.x / 2.x / SDXL base model",
        )
    for comp in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if comp not in index:
            raise UnsupportedModel(
                f"{source} ({cls or 'unknown pipeline'}) has no {comp} component"
            )
    unet_cfg = _read_json(folder / "unet" / "config.json")
    text_cfg = _read_json(folder / "text_encoder" / "config.json")
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    xl = cls == "StableDiffusionXLPipeline"
    if xl:
        for comp in ("text_encoder_2", "tokenizer_2"):
            if comp not in index or index[comp][0] is None:
                raise UnsupportedModel(f"{source} ({cls}) has no {comp} component")
    if unet_cfg.get("addition_embed_type") == "text_time" and not xl:
        raise UnsupportedModel(
            f"{source} has an SDXL UNet (addition_embed_type=text_time) in a {cls or 'pipeline'}",
            hint="sepme reads SDXL as a StableDiffusionXLPipeline folder",
        )
    if int(unet_cfg.get("in_channels", 4)) != 4:
        raise UnsupportedModel(
            f"{source} has a UNet with {unet_cfg.get('in_channels')} input channels (inpainting?); "
            "sepme supports text-to-image SD 1.x / 2.x"
        )
    notes = _weights_format(folder, allow_pickle, check_weights)
    width = int(unet_cfg.get("cross_attention_dim", 0) or 0)
    act = text_cfg.get("hidden_act")
    if xl:
        family = "sdxl"
    elif act == "quick_gelu":
        family = "sd1"
    elif act == "gelu":
        family = "sd2"
    else:
        family = "sd2" if width == 1024 else "sd1"
        notes.append(f"text encoder activation {act!r}: family guessed from width {width}")
    if override is not None:
        pred, psource = override, "override"
    elif sched_cfg.get("prediction_type"):
        pred, psource = normalize_prediction_type(str(sched_cfg["prediction_type"])), "config"
    else:
        pred, psource = "epsilon", "default"
    if family == "sd1" and pred == "v_prediction":
        notes.append(
            "an SD 1.x-family model with v-prediction: treated as sd1 with a v-prediction scheduler"
        )
    tok_cfg_path = folder / "tokenizer" / "tokenizer_config.json"
    max_len = 77
    if tok_cfg_path.is_file():
        max_len = int(_read_json(tok_cfg_path).get("model_max_length", 77) or 77)
        if max_len > 10_000:  # transformers' "very large integer" placeholder
            max_len = int(text_cfg.get("max_position_embeddings", 77))
    layers = _unet_layers_from_folder(folder, unet_cfg)
    recorded = index.get(MODEL_INDEX_KEY)
    profile = _recorded_profile(
        recorded.get("profile") if isinstance(recorded, dict) else None, notes
    )
    return SourceInfo(
        kind=kind,
        source=source,
        path=folder if kind == "diffusers" else None,
        hub_id=hub_id,
        arch=arch_for(family, pred),
        prediction_type=pred,
        prediction_source=psource,
        text_width=width,
        cross_attn_layers=layers,
        tokenizer_max_length=max_len,
        sample_size=int(unet_cfg.get("sample_size", 64)),
        has_embedded_config=False,
        file_format="diffusers",
        notes=tuple(notes),
        profile=profile,
    )


def hub_offline() -> bool:
    try:
        from huggingface_hub.constants import is_offline_mode

        if is_offline_mode():
            return True
    except ImportError:  # older huggingface_hub
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub_id(source: str) -> str | None:
    """The repo id for a short name or a `owner/name` string, else None."""
    if source in KNOWN_BASES:
        return KNOWN_BASES[source]
    return source if _HUB_ID.match(source) else None


def hub_snapshot(repo_id: str, *, configs_only: bool, allow_pickle: bool = False) -> Path:
    """A local snapshot of a hub repo: from the HF cache, or downloaded when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = ["*.json", "*.txt"]
    if not configs_only:
        comps = ("unet", "vae", "text_encoder", "text_encoder_2")
        # the top-level `*.safetensors` weights of SDXL repos are not needed (the folders are)
        patterns += [f"{c}/*.safetensors" for c in comps]
        if allow_pickle:
            patterns += [f"{c}/*.bin" for c in comps]
    for rid in (repo_id, *HUB_CACHE_ALIASES.get(repo_id, ())):
        try:
            return Path(snapshot_download(rid, allow_patterns=patterns, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
    if hub_offline():
        raise OfflineError(
            f"{repo_id} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)",
            hint="pass a local path (a diffusers folder or a .safetensors checkpoint), or go online once",
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise NotFound(
            f"no accessible hub repo {repo_id!r}",
            hint="check the id, log in with `hf auth login` for gated repos, or pass a local path",
        ) from e
    except Exception as e:  # network errors come in many types (httpx, OSError, hub errors)
        raise OfflineError(
            f"could not download {repo_id} from the Hugging Face hub: {e}",
            hint="check the network, or pass a local path (diffusers folder or .safetensors checkpoint)",
        ) from e


# ---------------------------------------------------------------------------------------------


def inspect_source(
    source: str | Path, *, prediction_type: str | None = None, allow_pickle: bool = False
) -> SourceInfo:
    """Identify a base model source; reads only headers and config files (no tensors)."""
    override = normalize_prediction_type(prediction_type) if prediction_type else None
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UnsupportedModel(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json)",
                hint="pass a diffusers pipeline folder or a .safetensors checkpoint file",
            )
        return _config_folder_info(
            path.resolve(),
            kind="diffusers",
            source=text,
            hub_id=None,
            override=override,
            allow_pickle=allow_pickle,
            check_weights=True,
        )
    if path.is_file():
        path = path.resolve()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise PickleRefused(
                    f"{path.name} is a pickle checkpoint; unpickling can run arbitrary code",
                    hint="convert it to .safetensors",
                    kind="pickle",
                )
            sd = load_pickle_state_dict(path)
            shapes = {k: tuple(int(s) for s in v.shape) for k, v in sd.items()}

            def pickled(name: str) -> list[float] | None:
                t = sd.get(name)
                return None if t is None else [float(x) for x in t.float().reshape(-1).tolist()]

            return _ldm_info(shapes, {}, path, "pickle", override, pickled)
        tensors, metadata = read_safetensors_header(path)
        shapes = {k: s for k, (_, s) in tensors.items()}
        return _ldm_info(
            shapes,
            metadata,
            path,
            "safetensors",
            override,
            lambda name: safetensors_tensor_values(path, name),
        )
    repo_id = resolve_hub_id(text)
    if repo_id is None or text.startswith((".", "/", "~")) or text.endswith(".safetensors"):
        raise NotFound(
            f"no file or folder {text!r}",
            hint=f"pass a diffusers folder, a .safetensors checkpoint, a hub id, or one of {', '.join(KNOWN_BASES)}",
        )
    try:
        snap = hub_snapshot(repo_id, configs_only=True)
    except OfflineError as e:
        if text in KNOWN_BASES:
            raise
        raise OfflineError(
            f"{e.message} (and there is no local file or folder {text!r})", hint=e.hint
        ) from e
    return _config_folder_info(
        snap,
        kind="hub",
        source=text,
        hub_id=repo_id,
        override=override,
        allow_pickle=allow_pickle,
        check_weights=False,
    )


__all__ = [
    "KNOWN_BASES",
    "SourceInfo",
    "hub_offline",
    "hub_snapshot",
    "inspect_source",
    "load_pickle_state_dict",
    "read_safetensors_header",
    "resolve_hub_id",
    "safetensors_tensor_values",
]
