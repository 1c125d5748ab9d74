"""The erasure methods, one module each, and their registry.

A method module declares:

- `NAME` — the `--method` word;
- `Config` — a frozen dataclass of its settings (checked in `__post_init__`);
- `Step` — the typed record its `progress` callback receives after each iteration (`iteration`,
  `max_steps`, `loss`, `elapsed_s`, and `momentum` / `tau` when it stops on a statistic);
- `train(pipe, prompt, preserve_prompts, latents, config, device, progress=None) -> MethodResult`
  (erase/common.py);
- `defaults(arch, erase) -> dict` — its settings, by word, before its own config.toml tables
  (`erase`: the base profile's `[erase]` / `[erase.ARCH]` settings, which are SepME's);
- `WORDS` — the config.toml / command-line words that name a Config field differently;
- `SET_BY_RUN` — Config fields the run fills (e.g. the pipeline's dtype), not settings;
- `TRAINING_DATA` — whether `train` needs latents sampled from the concept prompt;
- `KEEPS_PRESERVE` — whether the increment keeps E_k (recorded with it);
- optionally `next_round(config, result) -> Config` — `--until-erased`'s next training.

Adding a method is one module and one line in `REGISTRY` (or `register(name, module)`). This
package imports nothing heavy: the names are known without torch; `load(name)` imports the
module. The settings of a run are built by `erase/settings.py`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
    "sepme": "sepme_engine.erase.sepme",
    "sepme-cf": "sepme_engine.erase.sepme_cf",
    "esd-x": "sepme_engine.erase.esd",
    "fmn": "sepme_engine.erase.fmn",
    "uce": "sepme_engine.erase.uce",
}


def names() -> tuple[str, ...]:
    """The registered methods, in registry order (the `--method` choices)."""
    return tuple(REGISTRY)


def register(name: str, module: str) -> None:
    """Register the method module `module` (a dotted import path) as `name`."""
    REGISTRY[name] = module


def load(name: str) -> ModuleType:
    """The method module registered as `name` (KeyError for an unknown name)."""
    module = importlib.import_module(REGISTRY[name])
    if getattr(module, "NAME", None) != name:
        raise ValueError(
            f"{REGISTRY[name]} declares NAME {getattr(module, 'NAME', None)!r}, not {name!r}"
        )
    return module
