"""One table maps the engine's typed errors to what the user sees: one line, exit code 1."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
import typer.core

from sepme_engine import errors as E

# Error class -> label printed before the message.
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


# -- the next step, in the CLI's words, from the error's data ---------------------------------
def _q(name: str) -> str:
    return shlex.quote(name)


def _did_you_mean(exc: E.SepmeError) -> str:
    if not exc.candidates:
        return ""
    return "did you mean " + " or ".join(_q(c) for c in exc.candidates) + "? "


def _no_base(exc: E.SepmeError) -> str:
    from sepme_engine.bases import KNOWN_BASES

    q = _q(exc.name)
    if exc.name in KNOWN_BASES:
        step = (
            f"add it with `sepme base add {q}` (downloads {KNOWN_BASES[exc.name]}) "
            f"or `sepme base add {q} PATH`"
        )
    else:
        step = f"add one with `sepme base add {q} PATH`; `sepme base list` shows the bases you have"
    return _did_you_mean(exc) + step


def _no_increment(exc: E.SepmeError) -> str:
    create = f"create it with `sepme erase {_q(exc.name)} --base {_q(exc.base)}`"
    if exc.candidates:
        return _did_you_mean(exc) + create
    return f"`sepme list --base {_q(exc.base)}` shows them; {create}"


def _no_variant(exc: E.SepmeError) -> str:
    return _did_you_mean(exc) + (
        f"`sepme variants --base {_q(exc.base)}` lists them; "
        "save one with `sepme compose --name NAME`"
    )


def _hint_and(step: str) -> Callable[[E.SepmeError], str]:
    """The engine's own remedy, then the CLI's step ("; " between)."""
    return lambda exc: f"{exc.hint}; {step}" if exc.hint else step


# (error class, kind) -> the next step. The engine's message says what went wrong; this says
# what to run next. Errors not listed show the engine's hint (a remedy in no command's words).
NEXT_STEPS: dict[tuple[type[E.SepmeError], str], Callable[[E.SepmeError], str]] = {
    (E.NotFound, "base"): _no_base,
    (E.NotFound, "increment"): _no_increment,
    (E.NotFound, "variant"): _no_variant,
    (E.NotFound, "no-increments"): lambda e: (
        f'erase some first: `sepme erase "CONCEPT" --base {_q(e.base)}`'
    ),
    (E.NotFound, "export-folder"): lambda e: "make one with `sepme store export-increments DIR`",
    (E.NotFound, "linked-source"): lambda e: (
        f"put it back, or `sepme base rm {_q(e.name)}` and add it again"
    ),
    (E.AlreadyExists, "base"): lambda e: (
        f"choose another name, or `sepme base rm {_q(e.name)}` first (or pass --force)"
    ),
    (E.AlreadyExists, "increment"): lambda e: (
        f"pass --force to replace it, or `sepme rm {_q(e.name)} --base {_q(e.base)}` first"
    ),
    (E.AlreadyExists, "increments"): lambda e: (
        "pass --force to train them again, or `sepme rm` them first"
    ),
    (E.AlreadyExists, "variant"): lambda e: (
        "pass --force to replace it, or choose another name "
        f"(`sepme variants rm {_q(e.name)} --base {_q(e.base)}` removes it)"
    ),
    (E.BaseMismatch, "increment"): lambda e: (
        f"{e.hint or 'erase the concept again'} "
        f"(`sepme erase {_q(e.name)} --base {_q(e.base)} --force`)"
    ),
    (E.BaseMismatch, "export"): _hint_and("`sepme show CONCEPT` names its base"),
    (E.BaseMismatch, "import"): lambda e: (
        f"add the same checkpoint first (`sepme base add {_q(e.base)} PATH`), then import again"
    ),
    (E.CorruptEntry, "store"): lambda e: (
        "run `sepme store verify`" + (f"; {e.hint}" if e.hint else "")
    ),
    (E.InvalidInput, "no-concept"): _hint_and('e.g. `sepme erase "Van Gogh"`'),
    (E.InvalidInput, "no-increments"): lambda e: (
        f'create one with `sepme erase "CONCEPT" --base {_q(e.base)}`'
    ),
    (E.InvalidInput, "no-prompt"): lambda e: 'e.g. `sepme generate "a red circle on stripes"`',
    (E.InvalidInput, "not-toy"): lambda e: "use `sepme generate --compare` to look at a real base",
    (E.InvalidInput, "toy-base"): lambda e: "remove its increments with `sepme rm`",
    (E.InvalidInput, "base-source"): lambda e: f"pass a path: `sepme base add {_q(e.name)} PATH`",
    (E.InvalidInput, "zero-increments"): lambda e: "check the increments with `sepme inspect`",
    (E.Conflict, "base-add"): lambda e: f"run `sepme base add {_q(e.name)} ...` again",
    # the command line's options for what the engine's data says
    (E.AlreadyExists, "output"): lambda e: (
        "choose another output path or pass --force to replace it"
    ),
    (E.InvalidInput, "concept-name"): lambda e: (
        "give the concept a plain name and pass the text with --prompt"
    ),
    (E.InvalidInput, "unknown-words"): lambda e: (
        "use words the base knows (the toy base knows its 13 concepts), or pass --force "
        "to train anyway"
    ),
    (E.InvalidInput, "prompt-several"): lambda e: "erase them one call each, or drop --prompt",
    (E.InvalidInput, "until-erased"): lambda e: "drop --until-erased, or use --method sepme",
    (E.InvalidInput, "init"): lambda e: "--init closed-form (default) or --init zero (the paper's)",
    (E.InvalidInput, "cpu-dtype"): lambda e: "drop --dtype or pass --dtype fp32",
    (E.InvalidInput, "compare-nothing"): lambda e: (
        "erase a concept first, or pick some with --variant/--erase"
    ),
    (E.InvalidInput, "diffusers-file"): lambda e: (
        f"drop --format for a single file, or give a folder ({Path(e.path).name})"
    ),
    (E.InvalidInput, "lora-nothing-selected"): lambda e: (
        "erase a concept first, or pass --erase NAME"
    ),
    (E.InvalidInput, "rank"): lambda e: "pass --rank 4 or more",
    (E.InvalidInput, "rank-not-lora"): lambda e: "drop --rank, or pass --format lora",
    (E.InvalidInput, "hash-not-file"): lambda e: (
        "drop --hash, or export an ldm single file or a LoRA"
    ),
    (E.InvalidInput, "plain-and-selection"): lambda e: "drop --variant/--erase, or --plain",
    (E.InvalidInput, "n-images"): lambda e: "pass --n 1 or more",
    (E.InvalidInput, "image-path"): lambda e: "give -o a .png file",
    (E.InvalidInput, "erase-and-restore"): lambda e: (
        "name each concept once, in --erase or in --restore"
    ),
    (E.InvalidInput, "variant-and-erase"): lambda e: "give --variant or --erase, not both",
    (E.InvalidInput, "lora-sdxl-names"): lambda e: (
        "export the composition with --format ldm or diffusers instead"
    ),
    (E.UnsupportedModel, "single-file-layout"): lambda e: (
        "export it with --format diffusers instead"
    ),
    (E.PickleRefused, "pickle"): lambda e: (
        f"{e.hint or 'convert it to .safetensors'}, or pass --allow-pickle if you trust it "
        "(it is then loaded with torch.load(weights_only=True))"
    ),
    (E.DeviceUnavailable, "cuda"): lambda e: (
        "use --device cpu (or auto), or install a CUDA build of torch"
    ),
    (E.DeviceUnavailable, "cuda-index"): lambda e: "pick an existing index, or use --device cuda",
    (E.DeviceUnavailable, "mps"): lambda e: "use --device cpu (or auto)",
}


def next_step(exc: E.SepmeError) -> str | None:
    """What to run next: the CLI's words for the error's data, else the engine's hint."""
    for cls in type(exc).__mro__:
        step = NEXT_STEPS.get((cls, exc.kind))  # type: ignore[arg-type]
        if step is not None:
            return step(exc)
    return exc.hint


def format_error(exc: E.SepmeError) -> str:
    label = next((v for k, v in LABELS.items() if isinstance(exc, k)), "error")
    line = f"error ({label}): {_clip(exc.message, MAX_MESSAGE)}"
    step = next_step(exc)
    if step:
        line += f" — {_clip(step, MAX_HINT)}"
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


# `sepme list | head -1`: the reader went away. The exit status a SIGPIPE death gives (128 + 13),
# as `yes | head -1` does, so `set -o pipefail` still tells a cut-short listing from a full one.
BROKEN_PIPE_EXIT = 141


def exit_on_broken_pipe() -> NoReturn:
    """stdout's reader closed it early: no traceback, no error line. Python's recipe: what is
    still to be written (and flushed at exit) goes to /dev/null, then exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's): nothing to redirect
        pass
    sys.exit(BROKEN_PIPE_EXIT)


def install_broken_pipe_handler() -> None:
    """rich (the tables, --json, typer's --help) catches a BrokenPipeError itself and exits 1:
    make it exit as `exit_on_broken_pipe` does."""
    from rich.console import Console

    def on_broken_pipe(self: Console) -> None:
        self.quiet = True
        exit_on_broken_pipe()

    Console.on_broken_pipe = on_broken_pipe  # type: ignore[method-assign]


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
        except BrokenPipeError:  # stdout's reader went away (`sepme list | head -1`)
            if os.environ.get("SEPME_DEBUG") == "1":
                raise
            exit_on_broken_pipe()
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
