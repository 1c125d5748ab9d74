"""Effective settings: built-in defaults < config.toml in the store root < command-line options.

# $SEPME_HOME/config.toml
device = "auto"          # auto | cpu | cuda | mps
dtype = "auto"           # frozen weights on GPU: auto | fp32 | fp16 | bf16
[erase]                  # SepME hyper-parameters for every base
lr = 0.01
[erase.toy]              # ... or for one architecture (toy, sd1, sd2, sd2-v, sdxl)
steps = 200
preserve = []            # the profile's default preserve prompts (toy: its other concepts)
[erase.esd-x]            # one method's settings (any method: `sepme erase --method`) ...
lr = 1e-3
[erase.esd-x.toy]        # ... on one architecture
steps = 200

The method tables' keys are the method's Config fields; `sepme erase` checks them
(erase/settings.py), this module checks the types of the keys it knows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.erase import names as method_names
from sepme_engine.errors import ConfigError
from sepme_engine.models.arch import ARCHS
from sepme_engine.toy.vocab import CONCEPTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS: dict[str, type] = {"device": str, "dtype": str, "default_base": str}
ERASE_KEYS: dict[str, type] = {
    "steps": int,
    "lr": float,
    "tau": float,
    "lam": float,
    "beta": float,
    "alpha": float,
    "images": int,
    "image_steps": int,
    "image_guidance": float,
    "batch_size": int,
    "seed": int,
    "preserve": list,  # of prompts
    "init": str,  # "closed-form" or "zero" (the paper's)
    "anchor": str,  # the closed form maps the concept's keys/values onto this prompt's
    "contexts": list,  # captions the closed form erases the concept in (and holds the rest)
    "train_contexts": list,  # captions naming the concept SepME's iterations also train on
    "cf_push": float,  # η: the closed form's target moved past the anchor
    "cf_hold": float,  # λ_h: weight of the pool's captions that do not name the concept
    "verify_samples": int,  # toy base: images per prompt for the judged verdict (0: off)
    "until_rounds": int,  # --until-erased: at most this many extra trainings, τ lowered each
}
# One line per key, with an example value: `sepme config show --help` and docs/config.md (a test
# checks that both name every key).
KEY_DOCS: dict[str, tuple[str, str]] = {
    "device": ('"auto"', "where to run: auto (a GPU if there is one), cpu, cuda, mps"),
    "dtype": ('"auto"', "frozen weights on a GPU: auto, fp32, fp16, bf16"),
    "default_base": (
        '"sd15"',
        "the base used without --base, unless `sepme base use` chose one (else the toy base)",
    ),
    "steps": ("1000", "SepME: iteration cap"),
    "lr": ("0.01", "SepME: Adam learning rate on the coefficients"),
    "tau": ("0.0", "SepME: early stop once the momentum m_n of L_cor drops below τ"),
    "lam": ("3e-5", "SepME: L1 weight λ on the coefficients"),
    "beta": ("1e-4", "SepME: coefficient scale β"),
    "alpha": ("0.9", "SepME: momentum factor α of the stopping statistic"),
    "images": ("16", "training images sampled from the concept prompt"),
    "image_steps": ("25", "sampler steps per training image"),
    "image_guidance": ("7.5", "guidance scale of the training images"),
    "batch_size": ("1", "samples per iteration (L_cor averaged over them)"),
    "seed": ("0", "random seed of the training images and the iterations"),
    "preserve": (
        '["a photo", "a painting"]',
        "default preserve prompts added to every increment's E_k (toy: its 13 concepts)",
    ),
    "init": ('"closed-form"', "SepME's start: closed-form, or zero (the paper's recipe)"),
    "anchor": ('""', "the closed form maps the concept's keys/values onto this prompt's"),
    "contexts": (
        '["a photo of cat", "a cat on a sofa"]',
        "captions the closed form also erases the concept in (those naming it) and holds "
        "(the others); none by default (toy: `captions()` of sepme_engine.toy.vocab is a pool to try)",
    ),
    "train_contexts": (
        '["a photo of cat", "a cat on a sofa"]',
        "after the paper's stop SepME also trains on those of these captions that name the "
        "concept (half of each batch), against the same caption without it, until both are below "
        "τ; none by default (toy: its captions)",
    ),
    "cf_push": ("3.0", "closed form: its target moved this far past the anchor (η)"),
    "cf_hold": ("30.0", "closed form: weight λ_h of the held captions"),
    "verify_samples": ("8", "toy base: images per prompt for the judged verdict (0: off)"),
    "until_rounds": ("3", "--until-erased: at most this many extra trainings"),
}

# Every number a user can set, with the range it must lie in (finite, inclusive unless the
# bound is listed in OPEN_LOW): checked for config.toml here and for options by the CLI.
RANGES: dict[str, tuple[float, float]] = {
    "steps": (1, 1_000_000),
    "lr": (0.0, 10.0),
    "tau": (-1e3, 1e3),
    "lam": (0.0, 1e3),
    "beta": (0.0, 1e3),
    "alpha": (0.0, 1.0),
    "images": (1, 100_000),
    "image_steps": (1, 10_000),
    "image_guidance": (0.0, 100.0),
    "batch_size": (1, 4096),
    "seed": (0, 2**63 - 1),
    "cf_push": (0.0, 1e3),
    "cf_hold": (0.0, 1e6),
}
OPEN_LOW = frozenset({"lr", "beta"})  # must be > 0
OPEN_HIGH = frozenset({"alpha"})  # must be < 1


def range_error(key: str, value: float, lo: float, hi: float) -> str | None:
    """Why `value` is not acceptable for setting `key` (None when it is)."""
    import math

    if not math.isfinite(value):
        return f"{key} must be a finite number, got {value}"
    low_ok = value > lo if key in OPEN_LOW else value >= lo
    high_ok = value < hi if key in OPEN_HIGH else value <= hi
    if not (low_ok and high_ok):
        left = "(" if key in OPEN_LOW else "["
        right = ")" if key in OPEN_HIGH else "]"
        return f"{key} must be in {left}{lo:g}, {hi:g}{right}, got {value:g}"
    return None


ARCHES = ("toy", *ARCHS)  # settings profiles: the toy world and every architecture


def config_help() -> str:
    """The keys of config.toml, each with an example: `sepme config show --help`."""
    top = [f"{k} = {KEY_DOCS[k][0]}  # {KEY_DOCS[k][1]}" for k in TOP_KEYS]
    erase = [f"{k} = {KEY_DOCS[k][0]}  # {KEY_DOCS[k][1]}" for k in ERASE_KEYS]
    return "\n".join(
        [
            "$SEPME_HOME/config.toml (every key optional):",
            *top,
            "[erase]  # for every base; [erase.ARCH] for one architecture: " + ", ".join(ARCHES),
            *erase,
        ]
    )


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")

# The paper's values (docs/method.md §7) are the SD defaults; the toy base has its own, tuned on the toy world.
SD_ERASE_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "lr": 1e-2,
    "tau": 0.0,
    "lam": 3e-5,
    "beta": 1e-4,
    "alpha": 0.9,
    "images": 16,
    "image_steps": 25,
    "image_guidance": 7.5,
    "batch_size": 1,
    "seed": 0,
    "preserve": [],
    # the closed-form start (erase/closed_form.py) instead of C = 0: measured on the toy base
    # (README, "Erasure method"), it cuts the iterations and erases concepts C = 0 cannot reach;
    # `init = "zero"` is the paper's recipe
    "init": "closed-form",
    "anchor": "",
    "contexts": [],
    "train_contexts": [],
    "cf_push": 0.0,
    "cf_hold": 0.0,
    "verify_samples": 0,
    "until_rounds": 3,
}
# The toy base's weights and activations are on another scale than SD's: with β = 1e-4 the
# increment barely moves in 1000 iterations there, so the toy profile uses β = 1e-2. With batch 1
# the momentum m_n of the (very noisy) per-sample L_cor dips below τ = 0 long before the concept's
# correlation is gone (bare-prompt lift still +31 points for circle), so the toy profile averages
# L_cor over 4 samples per iteration (benchmarks/results/erase_defaults.md).
# Default preserve prompts: the toy world's 13 concepts. An increment erasing one of them keeps the
# others' bare prompts in its E_k (those sharing words with the concept are dropped, see
# erase.run.build_e_k), so it cannot move them: with E_k = the blank prompt alone, erasing circle
# cost up to 6 points of another concept's accuracy on full prompts (the erase issue's bar is 3).
# The smaller null space (m_k ≈ 42 of 128) slows training: lr 4e-2 (was 2e-2) halves the
# iterations, and τ = −1e-3 (about a tenth of the toy concepts' initial L_cor) stops a little past
# the point where the bare prompt reaches chance — at τ = 0 circle stopped at chance + 3 points
# (48 samples). benchmarks/results/erase_bar.md measures the result against the bar.
# Its training images are sampled with the toy's own settings.
# `train_contexts` (erase/sepme.py, the in-context stage) stays opt-in here too: with the toy's
# captions it takes yellow's full prompts from 15 % to 8 % (chance 9 %), but circle from 77 to
# 117 iterations (benchmarks/results/erase_bar_ctx.md), and the full benchmark with it is not
# measured yet. `[erase.sepme.toy] train_contexts = [...]` turns it on.
TOY_ERASE_DEFAULTS: dict[str, Any] = {
    **SD_ERASE_DEFAULTS,
    "beta": 1e-2,
    "lr": 4e-2,
    "tau": -1e-3,
    "batch_size": 4,
    "images": 4,
    "image_steps": 10,
    "image_guidance": 4.0,
    "preserve": list(CONCEPTS),
    "verify_samples": 8,
}
ERASE_DEFAULTS: dict[str, dict[str, Any]] = {
    # every architecture: the paper's SD values (SDXL's to_k/to_v see the 2048-d concatenation of
    # the two text encoders' penultimate hidden states; nothing in the method depends on the width)
    **{arch: dict(SD_ERASE_DEFAULTS) for arch in ARCHS},
    "toy": dict(TOY_ERASE_DEFAULTS),
}
TOP_DEFAULTS: dict[str, Any] = {"device": "auto", "dtype": "auto"}


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    source: str  # "default" | "<path>:<line>" | "command line"


@dataclass(frozen=True)
class EffectiveConfig:
    path: str
    exists: bool
    settings: tuple[Setting, ...]

    def get(self, key: str) -> Any:
        for s in self.settings:
            if s.key == key:
                return s.value
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "exists": self.exists,
            "settings": {s.key: {"value": s.value, "source": s.source} for s in self.settings},
        }

    def erase(self, arch: str) -> dict[str, Any]:
        prefix = f"erase.{arch}."
        return {s.key[len(prefix) :]: s.value for s in self.settings if s.key.startswith(prefix)}

    def method(self, method: str, arch: str) -> dict[str, Setting]:
        """`[erase.METHOD]` then `[erase.METHOD.ARCH]` (which wins), by key; unchecked beyond
        the types of keys this module knows (erase/settings.py checks them)."""
        out: dict[str, Setting] = {}
        for prefix in (f"erase.{method}.", f"erase.{method}.{arch}."):
            for s in self.settings:
                rest = s.key[len(prefix) :]
                if s.key.startswith(prefix) and "." not in rest:
                    out[rest] = s
        return out


def _line_of(text: str, section: str, key: str) -> int:
    current = ""
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped.strip("[]").strip()
            continue
        if current == section and stripped.split("=", 1)[0].strip() == key:
            return i
    # a sub-table: `[erase.sd15]` is key "sd15" of section "erase"
    header = f"{section}.{key}" if section else key
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.strip("[]").strip() == header:
            return i
    return 0


def _check(path: Path, text: str, section: str, key: str, value: Any, kind: type) -> Any:
    where = f"{path}:{_line_of(text, section, key)}"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{where}: {key} must be a list of prompts, got {value!r}",
                hint=f'fix the line in {path}, e.g. {key} = ["a photo", "a painting"]',
            )
        return list(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(
            f"{where}: {key} must be {kind.__name__}, got {value!r}",
            hint=f"fix or remove the line in {path}",
        )
    if key in RANGES and isinstance(value, int | float):
        problem = range_error(key, float(value), *RANGES[key])
    else:
        problem = None
    if problem:
        raise ConfigError(f"{where}: {problem}", hint=f"fix or remove the line in {path}")
    if key == "device" and value not in DEVICES:
        raise ConfigError(
            f"{where}: device must be one of {', '.join(DEVICES)}", hint=f"fix {path}"
        )
    if key == "dtype" and value not in DTYPES:
        raise ConfigError(f"{where}: dtype must be one of {', '.join(DTYPES)}", hint=f"fix {path}")
    return value


def load_config(root: Path) -> EffectiveConfig:
    path = Path(root) / "config.toml"
    data: dict[str, Any] = {}
    text = ""
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid TOML: {exc}", hint=f"fix the line named above in {path}"
            ) from exc
    settings: dict[str, Setting] = {k: Setting(k, v, "default") for k, v in TOP_DEFAULTS.items()}
    for arch in ARCHES:
        for k, v in ERASE_DEFAULTS[arch].items():
            v = list(v) if isinstance(v, list) else v  # no shared mutable defaults
            settings[f"erase.{arch}.{k}"] = Setting(f"erase.{arch}.{k}", v, "default")
    erase_all: dict[str, Any] = {}
    for key, value in data.items():
        if key == "erase":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [erase] must be a table", hint=f"fix {path}")
            erase_all = value
            continue
        if key not in TOP_KEYS:
            raise ConfigError(
                f"{path}:{_line_of(text, '', key)}: unknown setting {key!r}",
                hint=f"known settings: {', '.join(sorted(TOP_KEYS))}, [erase]",
            )
        value = _check(path, text, "", key, value, TOP_KEYS[key])
        settings[key] = Setting(key, value, f"{path}:{_line_of(text, '', key)}")
    methods = method_names()
    for key, value in erase_all.items():
        if key in ARCHES and isinstance(value, dict):
            continue
        if key in methods and isinstance(value, dict):
            _method_table(path, text, key, value, settings)
            continue
        if key not in ERASE_KEYS:
            if isinstance(value, dict):  # [erase.NAME] with a NAME that is not an architecture
                raise ConfigError(
                    f"{path}:{_line_of(text, 'erase', key)}: [erase.{key}] is not an architecture"
                    " nor a method",
                    hint=f"[erase.ARCH] takes one of {', '.join(ARCHES)} "
                    "(SD 1.x bases are sd1, SD 2.x sd2, SD 2.x v-prediction sd2-v); "
                    f"[erase.METHOD] one of {', '.join(methods)}",
                )
            raise ConfigError(
                f"{path}:{_line_of(text, 'erase', key)}: unknown erase setting {key!r}",
                hint=f"known: {', '.join(sorted(ERASE_KEYS))} or a [erase.ARCH] table ({', '.join(ARCHES)})",
            )
        value = _check(path, text, "erase", key, value, ERASE_KEYS[key])
        for arch in ARCHES:
            settings[f"erase.{arch}.{key}"] = Setting(
                f"erase.{arch}.{key}", value, f"{path}:{_line_of(text, 'erase', key)}"
            )
    for arch in ARCHES:
        table = erase_all.get(arch)
        if not isinstance(table, dict):
            continue
        section = f"erase.{arch}"
        for key, value in table.items():
            if key not in ERASE_KEYS:
                raise ConfigError(
                    f"{path}:{_line_of(text, section, key)}: unknown erase setting {key!r}",
                    hint=f"known: {', '.join(sorted(ERASE_KEYS))}",
                )
            value = _check(path, text, section, key, value, ERASE_KEYS[key])
            settings[f"{section}.{key}"] = Setting(
                f"{section}.{key}", value, f"{path}:{_line_of(text, section, key)}"
            )
    return EffectiveConfig(str(path), path.is_file(), tuple(settings.values()))


def _method_table(
    path: Path, text: str, method: str, table: dict[str, Any], settings: dict[str, Setting]
) -> None:
    """`[erase.METHOD]` and its `[erase.METHOD.ARCH]` sub-tables into `settings` (keys
    `erase.METHOD.KEY`, `erase.METHOD.ARCH.KEY`); keys of ERASE_KEYS are type-checked here."""
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in ARCHES:
                raise ConfigError(
                    f"{path}:{_line_of(text, f'erase.{method}', key)}: "
                    f"[erase.{method}.{key}] is not an architecture",
                    hint=f"[erase.{method}.ARCH] takes one of {', '.join(ARCHES)}",
                )
            section = f"erase.{method}.{key}"
            for k, v in value.items():
                _method_setting(path, text, section, k, v, settings)
        else:
            _method_setting(path, text, f"erase.{method}", key, value, settings)


def _method_setting(
    path: Path, text: str, section: str, key: str, value: Any, settings: dict[str, Setting]
) -> None:
    if isinstance(value, dict):
        raise ConfigError(
            f"{path}:{_line_of(text, section, key)}: [{section}.{key}] is not a setting",
            hint=f"fix {path}",
        )
    if key in ERASE_KEYS:
        value = _check(path, text, section, key, value, ERASE_KEYS[key])
    settings[f"{section}.{key}"] = Setting(
        f"{section}.{key}", value, f"{path}:{_line_of(text, section, key)}"
    )
