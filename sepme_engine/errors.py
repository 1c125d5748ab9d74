"""Typed errors raised by the engine. The CLI maps each to a one-line message and exit 1.

No dependencies: importable from anywhere, including the torch-free store.
"""

from __future__ import annotations


class SepmeError(Exception):
    """Base of every error the engine raises on purpose. `hint` says what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFound(SepmeError):
    """A named base, increment, variant or file does not exist."""


class AlreadyExists(SepmeError):
    """A name is taken and --force was not given."""


class InvalidName(SepmeError):
    """A name is not a valid slug."""


class InvalidInput(SepmeError):
    """A value given by the user is unusable (empty prompt, bad option...)."""


class BaseMismatch(SepmeError):
    """An increment belongs to another base (digest) or its layers/shapes do not fit."""


class StoreLocked(SepmeError):
    """The store lock could not be taken in time."""


class SchemaTooNew(SepmeError):
    """A manifest or file was written by a newer sepme."""


class CorruptEntry(SepmeError):
    """A manifest, blob or tensor file is unreadable or fails its digest."""


class ConfigError(SepmeError):
    """config.toml is malformed or holds an unknown/invalid value."""


class UnsupportedModel(SepmeError):
    """The checkpoint's architecture is not one sepme supports."""


class PickleRefused(SepmeError):
    """A pickle checkpoint was given without --allow-pickle."""


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
