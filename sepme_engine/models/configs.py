"""Diffusers config folders, offline: the shipped ones and those embedded in sepme's files.

A "configs" dict has the structure sepme embeds in its exported single files under the
safetensors metadata key `sepme.configs`:

    {"model_index": {...}, "unet": {...}, "vae": {...}, "text_encoder": {...},
     "scheduler": {...},
     "tokenizer": {"clip": {"pad_token": "...", "max_length": N}} | {"files": {name: text}}}

SDXL configs (model_index `_class_name` StableDiffusionXLPipeline) also have "text_encoder_2"
(CLIPTextModelWithProjection) and "tokenizer_2" (same structure as "tokenizer").

`write_config_dir` turns it into a folder `from_single_file(config=...)` / `from_pretrained`
accept (with a real CLIP tokenizer folder built from the shipped BPE file).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from sepme_engine.errors import CorruptEntry, InvalidInput
from sepme_engine.models.arch import ARCHS
from sepme_engine.models.tokenizer import VOCAB_SIZE, clip_vocab_and_merges, write_tokenizer_dir

SHIPPED_DIR = Path(__file__).parent / "shipped"
CONFIGS_METADATA_KEY = "sepme.configs"
# The base's settings profile, recorded in exports so a re-import keeps it: safetensors
# metadata key for single files, a key of model_index.json for diffusers folders (diffusers
# ignores keys that start with "_").
PROFILE_METADATA_KEY = "sepme.profile"
MODEL_INDEX_KEY = "_sepme"
KNOWN_PROFILES = ("toy", *ARCHS)  # settings profiles: the toy world and every architecture
# config keys that hold where a model was loaded from (a local path): never exported
LOCAL_PATH_KEYS = ("_name_or_path",)
COMPONENT_FILES = {
    "model_index": "model_index.json",
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
# SDXL's second text encoder (its second tokenizer is the configs' "tokenizer_2")
XL_COMPONENT_FILES = {"text_encoder_2": "text_encoder_2/config.json"}
XL_PIPELINE = "StableDiffusionXLPipeline"
SHIPPED_NAMES = tuple(a.shipped_config for a in ARCHS.values())


def is_xl(configs: dict[str, Any]) -> bool:
    """Whether a configs dict describes an SDXL pipeline."""
    return bool(configs.get("model_index", {}).get("_class_name") == XL_PIPELINE)


def shipped_configs(arch_or_name: str) -> dict[str, Any]:
    """The shipped configs for an architecture (a key of `arch.ARCHS`) or a folder name
    (`SHIPPED_NAMES`: "sd15", "sd21-base", ...), as a configs dict (a fresh copy)."""
    name = ARCHS[arch_or_name].shipped_config if arch_or_name in ARCHS else arch_or_name
    if name not in SHIPPED_NAMES:
        raise InvalidInput(f"no shipped config {arch_or_name!r}", hint=f"one of {SHIPPED_NAMES}")
    root = SHIPPED_DIR / name
    out: dict[str, Any] = {
        comp: json.loads((root / rel).read_text(encoding="utf-8"))
        for comp, rel in COMPONENT_FILES.items()
    }
    if is_xl(out):
        for comp, rel in XL_COMPONENT_FILES.items():
            out[comp] = json.loads((root / rel).read_text(encoding="utf-8"))
    for tok in ("tokenizer", "tokenizer_2") if is_xl(out) else ("tokenizer",):
        out[tok] = {
            "clip": json.loads((root / tok / "sepme_clip.json").read_text(encoding="utf-8"))
        }
    return out


def validate_configs(configs: Any) -> dict[str, Any]:
    """Check the structure of a configs dict (e.g. parsed from file metadata); return it."""
    if not isinstance(configs, dict):
        raise CorruptEntry("embedded configs are not a JSON object")
    required = [*COMPONENT_FILES, "tokenizer"]
    if is_xl(configs):
        required += [*XL_COMPONENT_FILES, "tokenizer_2"]
    missing = [c for c in required if not isinstance(configs.get(c), dict)]
    if missing:
        raise CorruptEntry(
            f"embedded configs lack {', '.join(missing)}",
            hint=f"re-export the file with sepme, or remove its {CONFIGS_METADATA_KEY!r} metadata "
            "to load it with the shipped configs",
            kind="embedded-configs",
        )
    for name in ("tokenizer", "tokenizer_2") if is_xl(configs) else ("tokenizer",):
        if "clip" not in configs[name] and "files" not in configs[name]:
            raise CorruptEntry(f"embedded {name} config has neither 'clip' nor 'files'")
    return configs


def write_config_dir(configs: dict[str, Any], dest: Path) -> Path:
    """Write a diffusers pipeline config folder (no weights) at `dest`; return `dest`."""
    validate_configs(configs)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {**COMPONENT_FILES, **(XL_COMPONENT_FILES if is_xl(configs) else {})}
    for comp, rel in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(configs[comp], indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    for name in ("tokenizer", "tokenizer_2") if is_xl(configs) else ("tokenizer",):
        _write_tokenizer(configs[name], dest / name)
    return dest


def _write_tokenizer(tok: dict[str, Any], tok_dir: Path) -> None:
    if "clip" in tok:
        clip = tok["clip"]
        write_tokenizer_dir(
            tok_dir,
            pad_token=str(clip.get("pad_token", "<|endoftext|>")),
            max_length=int(clip.get("max_length", 77)),
        )
    else:
        tok_dir.mkdir(parents=True, exist_ok=True)
        for name, text in tok["files"].items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise CorruptEntry(f"bad tokenizer file name {name!r} in embedded configs")
            (tok_dir / name).write_text(text, encoding="utf-8")


def without_local_paths(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict without the keys that record a local source path."""
    return {k: v for k, v in config.items() if k not in LOCAL_PATH_KEYS}


def set_prediction_type(configs: dict[str, Any], prediction_type: str) -> dict[str, Any]:
    """A copy of `configs` whose scheduler uses `prediction_type`."""
    out = copy.deepcopy(configs)
    out["scheduler"]["prediction_type"] = prediction_type
    return out


def _is_standard_clip_tokenizer(tok: Any) -> bool:
    if type(tok).__name__ not in ("CLIPTokenizer", "CLIPTokenizerFast") or len(tok) != VOCAB_SIZE:
        return False
    vocab, _ = clip_vocab_and_merges()
    return bool(tok.get_vocab() == vocab)


def _tokenizer_config(tok: Any) -> dict[str, Any]:
    import tempfile

    if _is_standard_clip_tokenizer(tok):
        return {"clip": {"pad_token": str(tok.pad_token), "max_length": int(tok.model_max_length)}}
    with tempfile.TemporaryDirectory(prefix="sepme-tok-") as tmp:
        tok.save_pretrained(tmp)
        files = {
            p.name: p.read_text(encoding="utf-8")
            for p in sorted(Path(tmp).iterdir())
            if p.is_file()
        }
    return {"files": files}


def _text_config(encoder: Any) -> dict[str, Any]:
    cfg = without_local_paths(json.loads(encoder.config.to_json_string()))
    cfg.setdefault("architectures", [type(encoder).__name__])
    return cfg


def pipeline_configs(pipe: Any) -> dict[str, Any]:
    """The configs dict of a loaded StableDiffusion(XL)Pipeline (JSON-serialisable)."""

    def diff_cfg(obj: Any) -> dict[str, Any]:
        return without_local_paths(dict(json.loads(obj.to_json_string())))

    xl = getattr(pipe, "text_encoder_2", None) is not None
    model_index: dict[str, Any] = {
        "_class_name": XL_PIPELINE if xl else "StableDiffusionPipeline",
        "_diffusers_version": diff_cfg(pipe.unet).get("_diffusers_version", "0.0.0"),
        "scheduler": ["diffusers", type(pipe.scheduler).__name__],
        "text_encoder": ["transformers", type(pipe.text_encoder).__name__],
        "tokenizer": ["transformers", type(pipe.tokenizer).__name__],
        "unet": ["diffusers", type(pipe.unet).__name__],
        "vae": ["diffusers", type(pipe.vae).__name__],
    }
    if xl:
        model_index["text_encoder_2"] = ["transformers", type(pipe.text_encoder_2).__name__]
        model_index["tokenizer_2"] = ["transformers", type(pipe.tokenizer_2).__name__]
        model_index["force_zeros_for_empty_prompt"] = bool(
            pipe.config.get("force_zeros_for_empty_prompt", True)
        )
    else:
        model_index["feature_extractor"] = [None, None]
        model_index["requires_safety_checker"] = False
        model_index["safety_checker"] = [None, None]
    out = {
        "model_index": model_index,
        "unet": diff_cfg(pipe.unet),
        "vae": diff_cfg(pipe.vae),
        "text_encoder": _text_config(pipe.text_encoder),
        "scheduler": diff_cfg(pipe.scheduler),
        "tokenizer": _tokenizer_config(pipe.tokenizer),
    }
    if xl:
        out["text_encoder_2"] = _text_config(pipe.text_encoder_2)
        out["tokenizer_2"] = _tokenizer_config(pipe.tokenizer_2)
    return out


__all__ = [
    "CONFIGS_METADATA_KEY",
    "KNOWN_PROFILES",
    "MODEL_INDEX_KEY",
    "PROFILE_METADATA_KEY",
    "SHIPPED_NAMES",
    "XL_COMPONENT_FILES",
    "XL_PIPELINE",
    "is_xl",
    "pipeline_configs",
    "set_prediction_type",
    "shipped_configs",
    "validate_configs",
    "without_local_paths",
    "write_config_dir",
]
