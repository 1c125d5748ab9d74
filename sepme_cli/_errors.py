"""One table maps the engine's typed errors to what the user sees: one line, exit code 1."""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any

import click
import typer
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
    E.Conflict: "conflict",
}


MAX_MESSAGE = 400  # a 10k-character prompt inside a message must not make a 10k "line"
MAX_HINT = 300


def _clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters: a long middle (a 10k-character prompt quoted in
    the message) is cut out, the head and the tail (what went wrong) are kept."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    tail = limit // 3
    return text[: limit - tail - 1] + "…" + text[-tail:]


def format_error(exc: E.SepmeError) -> str:
    label = next((v for k, v in LABELS.items() if isinstance(exc, k)), "error")
    line = f"error ({label}): {_clip(exc.message, MAX_MESSAGE)}"
    if exc.hint:
        line += f" — {_clip(exc.hint, MAX_HINT)}"
    return line


# What to do about an environment / I/O error, by errno.
OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "free some disk space (or write elsewhere) and run it again",
    errno.EDQUOT: "the disk quota is full; free some space and run it again",
    errno.EROFS: "that file system is read-only; choose a writable location (or SEPME_HOME)",
    errno.EFBIG: "the file is larger than the file size limit (`ulimit -f`); raise the limit",
    errno.EACCES: "check the permissions of that path",
    errno.EPERM: "check the permissions of that path",
    errno.ENOENT: "check the path and run it again",
    errno.ENOTDIR: "a part of that path is a file, not a folder; check the path",
    errno.EISDIR: "that path is a folder; give a file path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
    errno.EIO: "the disk reported an I/O error; check it",
}


def format_os_error(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    hint = OS_HINTS.get(exc.errno or 0, "check the path and the disk, then run it again")
    return _clip(f"error (I/O{' ' + code if code else ''}): {what}{where} — {hint}", 700)


class _EchoHandler(logging.Handler):
    """Engine notes (the "sepme" logger: e.g. a stale export temporary removed) as one stderr
    line each, looked up at emit time so test runners that swap stderr see them."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {_clip(record.getMessage(), MAX_MESSAGE)}", err=True)


def install_log_handler() -> None:
    logger = logging.getLogger("sepme")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.INFO))
        logger.setLevel(logging.INFO)
        logger.propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the same clean-up as Ctrl-C runs."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM behaves like SIGINT (clean-up, a message, exit 143); SIGXFSZ is ignored so a
    write past `ulimit -f` fails with EFBIG (a one-line error) instead of killing the process."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# typer vendors its own click: catch its UsageError (found through typer.BadParameter) and click's
USAGE_ERRORS: tuple[type[Exception], ...] = tuple(
    {click.UsageError, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")}
)


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
        except USAGE_ERRORS as exc:  # bad option values: one line, exit 2
            if os.environ.get("SEPME_DEBUG") == "1":
                raise
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx else "sepme"
            text = _clip(exc.format_message(), MAX_MESSAGE)  # type: ignore[attr-defined]
            click.echo(f"error (usage): {text} — see `{where} --help`", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except OSError as exc:  # environment and I/O errors (ENOSPC, EROFS, EFBIG, ...)
            if os.environ.get("SEPME_DEBUG") == "1":
                raise
            click.echo(format_os_error(exc), err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            if os.environ.get("SEPME_DEBUG") == "1":
                raise
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"{what}: nothing half-written was kept", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
