"""Typed errors raised by the engine. Each carries data; an interface owns the words.

`message` says what went wrong in the engine's words, `hint` (optional) a remedy that needs no
particular interface ("convert it to .safetensors"). The data fields say what the error is about
(`kind`: "base", "increment", "variant", ... or, for InvalidInput, the situation; `name`, `base`,
`path`, close `candidates`), so the CLI (sepme_cli/_errors.py) can name its own next step
("add one with `sepme base add sd15 PATH`") and a Python caller can act on the fields.

No dependencies: importable from anywhere, including the torch-free store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SepmeError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        kind: str = "",
        name: str = "",
        base: str = "",
        path: str = "",
        candidates: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.kind = kind
        self.name = name
        self.base = base
        self.path = str(path)
        self.candidates = tuple(candidates)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled with its data (a launcher's processes send failed rows to rank 0), not only
        # the message Exception keeps in `args`
        return (_rebuild, (type(self), self.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-safe data: its class, message, hint and data fields."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "kind": self.kind,
            "name": self.name,
            "base": self.base,
            "path": self.path,
            "candidates": list(self.candidates),
        }


def _rebuild(cls: type[SepmeError], data: dict[str, Any]) -> SepmeError:
    """The error `to_dict` described (its inverse, for pickle)."""
    fields = {k: v for k, v in data.items() if k not in ("error", "message", "hint")}
    return cls(data["message"], data["hint"], **fields)


class NotFound(SepmeError):
    """A named base, increment, variant or file does not exist (`kind`, `name`, `base`, close
    `candidates`)."""


class AlreadyExists(SepmeError):
    """A name is taken and replacing it was not asked for (`kind`, `name`, `base`)."""


class InvalidName(SepmeError):
    """A name is not a valid slug."""


class InvalidInput(SepmeError):
    """A value given by the user is unusable (empty prompt, bad option...); `kind` names the
    situation where an interface has more to say."""


class BaseMismatch(SepmeError):
    """An increment belongs to another base (digest) or its layers/shapes do not fit."""


class StoreLocked(SepmeError):
    """The store lock could not be taken in time."""


class SchemaTooNew(SepmeError):
    """A manifest or file was written by a newer sepme."""


class CorruptEntry(SepmeError):
    """A manifest, blob or tensor file is unreadable or fails its digest (`kind` "store" for an
    entry of the store)."""


class ConfigError(SepmeError):
    """config.toml is malformed or holds an unknown/invalid value."""


class UnsupportedModel(SepmeError):
    """The checkpoint's architecture is not one sepme supports."""


class PickleRefused(SepmeError):
    """A pickle checkpoint was given without allowing pickles."""


class OfflineError(SepmeError):
    """A hub download was needed but no network/cache is available."""


class NullSpaceEmpty(SepmeError):
    """The preserved prompts fill the text-embedding space: no room for an increment."""


class TrainingDiverged(SepmeError):
    """The loss became non-finite during training."""


class DeviceUnavailable(SepmeError):
    """The requested device (cuda/mps) is not available."""


class Conflict(SepmeError):
    """Another sepme process changed what this command depended on while it ran."""
