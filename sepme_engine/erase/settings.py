"""One settings pipeline for `sepme erase`: a method's Config is built once, from

    the method's defaults for the base's architecture
      (SepME: the profile's built-in values < config.toml `[erase]` < `[erase.ARCH]`)
    < config.toml `[erase.METHOD]` < `[erase.METHOD.ARCH]`
    < the command line's options,

and a key the method does not take — in its tables or on the command line — is refused with the
list of those it does take. The words are the Config's field names, except the few a method
renames in its `WORDS` (SepME: `steps`, `images`, `image_guidance`). The run's own settings
(`preserve`, `verify_samples`, `until_rounds`) come from `[erase]` / `[erase.ARCH]`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sepme_engine import erase as registry
from sepme_engine.config import (
    ERASE_DEFAULTS,
    RANGES,
    EffectiveConfig,
    Setting,
    range_error,
)
from sepme_engine.errors import ConfigError, InvalidInput

RUN_KEYS = ("preserve", "verify_samples", "until_rounds")


@dataclass(frozen=True)
class EraseSettings:
    """Everything a run's settings decide: the method's Config and the run's own settings."""

    method: str
    config: Any  # the method's Config
    preserve: tuple[str, ...]  # the profile's default preserve prompts
    verify_samples: int  # toy base: images per prompt for the judged verdict
    until_rounds: int  # --until-erased: at most this many extra trainings

    def word(self, word: str) -> Any:
        """The Config's value of a config.toml / command-line word."""
        return getattr(self.config, field_of(registry.load(self.method), word))


def method_module(method: str) -> ModuleType:
    """The registered method, or InvalidInput naming the registered ones."""
    if method not in registry.names():
        raise InvalidInput(
            f"unknown method {method!r}", hint=f"choose one of {', '.join(registry.names())}"
        )
    return registry.load(method)


def words(module: ModuleType) -> dict[str, str]:
    """word -> Config field, for every setting of the method."""
    rename = {f: w for w, f in module.WORDS.items()}
    return {
        rename.get(f.name, f.name): f.name
        for f in dataclasses.fields(module.Config)
        if f.name not in module.SET_BY_RUN
    }


def field_of(module: ModuleType, word: str) -> str:
    return str(module.WORDS.get(word, word))


def check_options(method: str, options: Mapping[str, Any]) -> None:
    """Refuse the given (not None) options `method` does not take: InvalidInput naming the
    options it does take (among `options`' names)."""
    module = method_module(method)
    known = words(module)
    given = [k for k, v in options.items() if v is not None]
    bad = [k for k in given if k not in known]
    if bad:  # the words (`tau`): an interface names its own options (the CLI: `--tau`)
        takes = [k for k in options if k in known]
        raise InvalidInput(
            f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to method {method}",
            hint=f"{method} takes {', '.join(takes) or 'none of these settings'}; "
            "drop the setting or choose another method",
            kind="not-for-method",
            name=method,
        )


def build(
    method: str,
    arch: str,
    config: EffectiveConfig | None = None,
    options: Mapping[str, Any] | None = None,
    **set_by_run: Any,
) -> EraseSettings:
    """The run's settings for `method` on a base of architecture `arch`: `config` is the
    loaded config.toml (None: built-in defaults only), `options` the command line's (None =
    not given), `set_by_run` the Config fields the run fills (e.g. dtype)."""
    module = method_module(method)
    known = words(module)
    erase_table = config.erase(arch) if config is not None else _builtin(arch)
    values: dict[str, Any] = dict(module.defaults(arch, erase_table))
    if config is not None:
        for key, setting in config.method(method, arch).items():
            values[key] = _checked(module, method, known, key, setting)
    options = dict(options or {})
    check_options(method, options)
    values.update({k: v for k, v in options.items() if v is not None})
    fields = {known[k]: v for k, v in values.items()}
    fields.update({k: v for k, v in set_by_run.items() if k in module.SET_BY_RUN})
    return EraseSettings(
        method,
        module.Config(**fields),
        tuple(erase_table.get("preserve", ())),
        int(erase_table.get("verify_samples", 0)),
        int(erase_table.get("until_rounds", 3)),
    )


def _builtin(arch: str) -> dict[str, Any]:
    table = ERASE_DEFAULTS[arch]
    return {k: list(v) if isinstance(v, list) else v for k, v in table.items()}


def _checked(
    module: ModuleType, method: str, known: Mapping[str, str], key: str, setting: Setting
) -> Any:
    """A `[erase.METHOD...]` value, checked against the method's Config field."""
    where = setting.source
    if key not in known:
        raise ConfigError(
            f"{where}: {key!r} is not a setting of {method}",
            hint=f"{method} takes {', '.join(sorted(known))}; fix or remove the line",
        )
    kind = typing.get_type_hints(module.Config)[known[key]]
    value = setting.value
    allowed = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
    ok: bool
    if allowed:
        ok = value in allowed
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif typing.get_origin(kind) is tuple:  # tuple[str, ...]: a list of prompts
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - every Config field is one of the above
        ok = True
    if not ok:
        want = " or ".join(repr(a) for a in allowed) if allowed else getattr(kind, "__name__", kind)
        raise ConfigError(
            f"{where}: {key} must be {want}, got {setting.value!r}",
            hint="fix or remove the line",
        )
    if key in RANGES and isinstance(value, int | float) and not isinstance(value, bool):
        problem = range_error(key, float(value), *RANGES[key])
        if problem:
            raise ConfigError(f"{where}: {problem}", hint="fix or remove the line")
    return value
