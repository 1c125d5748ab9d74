"""Diffusers config folders, offline: the shipped ones and those embedded in sepme's files.

A "configs" dict has the structure sepme embeds in its exported single files under the
safetensors metadata key `sepme.configs`:

    {"model_index": {...}, "unet": {...}, "vae": {...}, "text_encoder": {...},
     "scheduler": {...},
     "tokenizer": {"clip": {"pad_token": "...", "max_length": N}} | {"files": {name: text}}}

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
KNOWN_PROFILES = ("toy", "sd1", "sd2", "sd2-v")
# config keys that hold where a model was loaded from (a local path): never exported
LOCAL_PATH_KEYS = ("_name_or_path",)
COMPONENT_FILES = {
    "model_index": "model_index.json",
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
SHIPPED_NAMES = ("sd15", "sd21-base", "sd21")


def shipped_configs(arch_or_name: str) -> dict[str, Any]:
    """The shipped configs for an architecture ("sd1", "sd2", "sd2-v") or a folder name
    ("sd15", "sd21-base", "sd21"), as a configs dict (a fresh copy)."""
    name = ARCHS[arch_or_name].shipped_config if arch_or_name in ARCHS else arch_or_name
    if name not in SHIPPED_NAMES:
        raise InvalidInput(f"no shipped config {arch_or_name!r}", hint=f"one of {SHIPPED_NAMES}")
    root = SHIPPED_DIR / name
    out: dict[str, Any] = {
        comp: json.loads((root / rel).read_text(encoding="utf-8"))
        for comp, rel in COMPONENT_FILES.items()
    }
    out["tokenizer"] = {
        "clip": json.loads((root / "tokenizer" / "sepme_clip.json").read_text(encoding="utf-8"))
    }
    return out


def validate_configs(configs: Any) -> dict[str, Any]:
    """Check the structure of a configs dict (e.g. parsed from file metadata); return it."""
    if not isinstance(configs, dict):
        raise CorruptEntry("embedded configs are not a JSON object")
    missing = [c for c in (*COMPONENT_FILES, "tokenizer") if not isinstance(configs.get(c), dict)]
    if missing:
        raise CorruptEntry(
            f"embedded configs lack {', '.join(missing)}",
            hint="re-export the file with sepme, or pass --prediction-type/--arch to use the shipped configs",
        )
    tok = configs["tokenizer"]
    if "clip" not in tok and "files" not in tok:
        raise CorruptEntry("embedded tokenizer config has neither 'clip' nor 'files'")
    return configs


def write_config_dir(configs: dict[str, Any], dest: Path) -> Path:
    """Write a diffusers pipeline config folder (no weights) at `dest`; return `dest`."""
    validate_configs(configs)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for comp, rel in COMPONENT_FILES.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(configs[comp], indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    tok = configs["tokenizer"]
    tok_dir = dest / "tokenizer"
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
    return dest


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


def pipeline_configs(pipe: Any) -> dict[str, Any]:
    """The configs dict of a loaded StableDiffusionPipeline (JSON-serialisable)."""
    import tempfile

    def diff_cfg(obj: Any) -> dict[str, Any]:
        return without_local_paths(dict(json.loads(obj.to_json_string())))

    text_cfg = without_local_paths(json.loads(pipe.text_encoder.config.to_json_string()))
    text_cfg.setdefault("architectures", [type(pipe.text_encoder).__name__])
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diff_cfg(pipe.unet).get("_diffusers_version", "0.0.0"),
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(pipe.scheduler).__name__],
        "text_encoder": ["transformers", type(pipe.text_encoder).__name__],
        "tokenizer": ["transformers", type(pipe.tokenizer).__name__],
        "unet": ["diffusers", type(pipe.unet).__name__],
        "vae": ["diffusers", type(pipe.vae).__name__],
    }
    tok = pipe.tokenizer
    tokenizer: dict[str, Any]
    if _is_standard_clip_tokenizer(tok):
        tokenizer = {
            "clip": {"pad_token": str(tok.pad_token), "max_length": int(tok.model_max_length)}
        }
    else:
        with tempfile.TemporaryDirectory(prefix="sepme-tok-") as tmp:
            tok.save_pretrained(tmp)
            files = {
                p.name: p.read_text(encoding="utf-8")
                for p in sorted(Path(tmp).iterdir())
                if p.is_file()
            }
        tokenizer = {"files": files}
    return {
        "model_index": model_index,
        "unet": diff_cfg(pipe.unet),
        "vae": diff_cfg(pipe.vae),
        "text_encoder": text_cfg,
        "scheduler": diff_cfg(pipe.scheduler),
        "tokenizer": tokenizer,
    }


__all__ = [
    "CONFIGS_METADATA_KEY",
    "KNOWN_PROFILES",
    "MODEL_INDEX_KEY",
    "PROFILE_METADATA_KEY",
    "SHIPPED_NAMES",
    "pipeline_configs",
    "set_prediction_type",
    "shipped_configs",
    "validate_configs",
    "without_local_paths",
    "write_config_dir",
]
