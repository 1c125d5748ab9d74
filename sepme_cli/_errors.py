"""One table maps the engine's typed errors to what the user sees: one line, exit code 1."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import typer.core

from sepme_engine import errors as E

# Error class -> label printed before the message. The engine's message says what went wrong,
# its hint says what to run next.
LABELS: dict[type[E.SepmeError], str] = {
    E.NotFound: "not found",
    E.AlreadyExists: "already exists",
    E.InvalidName: "invalid name",
    E.InvalidInput: "invalid input",
    E.BaseMismatch: "base mismatch",
    E.StoreLocked: "store locked",
    E.SchemaTooNew: "newer schema",
    E.CorruptEntry: "corrupt",
    E.ConfigError: "config error",
    E.UnsupportedModel: "unsupported model",
    E.PickleRefused: "pickle refused",
    E.OfflineError: "offline",
    E.NullSpaceEmpty: "no room",
    E.TrainingDiverged: "training diverged",
    E.DeviceUnavailable: "device unavailable",
}


def format_error(exc: E.SepmeError) -> str:
    label = next((v for k, v in LABELS.items() if isinstance(exc, k)), "error")
    line = f"error ({label}): {exc.message}"
    if exc.hint:
        line += f" — {exc.hint}"
    return " ".join(line.split())


class SepmeGroup(typer.core.TyperGroup):
    """Top-level group: engine errors become a one-line message and exit 1 (SEPME_DEBUG=1 re-raises)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except E.SepmeError as exc:
            if os.environ.get("SEPME_DEBUG") == "1":
                raise
            click.echo(format_error(exc), err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            if os.environ.get("SEPME_DEBUG") == "1":
                raise
            click.echo("interrupted: nothing half-written was kept", err=True)
            sys.exit(130)
