"""Shared option types, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from sepme_cli._complete import complete_base, complete_concept, complete_variant
from sepme_engine.store import Store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing entry or file.")]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        "-b",
        help="Base to use (default: `sepme base use`, else toy).",
        autocompletion=complete_base,
    ),
]
BaseArg = Annotated[str, typer.Argument(help="Base name.", autocompletion=complete_base)]
ConceptArg = Annotated[
    str, typer.Argument(help="Concept name (as erased).", autocompletion=complete_concept)
]
VariantArg = Annotated[str, typer.Argument(help="Variant name.", autocompletion=complete_variant)]
VariantOpt = Annotated[
    str | None,
    typer.Option("--variant", help="Use this saved variant.", autocompletion=complete_variant),
]
EraseListOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--erase", help="Use these increments (comma-separated).", autocompletion=complete_concept
    ),
]


def open_store() -> Store:
    """The store at $SEPME_HOME (or the user data dir), announcing waits for its lock."""
    from sepme_cli._render import err

    store = Store()
    store.on_lock_wait = lambda msg: err.print(f"[yellow]{msg}[/]")
    return store


def confirm(question: str, yes: bool) -> None:
    """Ask (on stderr) unless `yes`; a "no", or no answer at all (no terminal, stdin closed),
    exits 1 with a line that names `--yes`."""
    from sepme_cli._render import err

    if yes:
        return
    try:
        ok = typer.confirm(question, err=True)
    except Exception as exc:  # click's Abort (typer vendors its own click): no answer
        if type(exc).__name__ != "Abort":
            raise
        ok = False
    if not ok:
        err.print("not confirmed: nothing removed; pass --yes to do it without asking")
        raise typer.Exit(1)


def in_range(key: str, lo: float | None = None, hi: float | None = None) -> Callable[[Any], Any]:
    """An option callback: the value must be finite and within [lo, hi] (the engine's RANGES
    for `key` when no bounds are given, shared with config.toml). None (unset) passes."""

    def check(value: Any) -> Any:
        from sepme_engine.config import RANGES, range_error

        if value is None:
            return value
        low, high = RANGES[key] if lo is None or hi is None else (lo, hi)
        problem = range_error(key, float(value), low, high)
        if problem:
            raise typer.BadParameter(problem)
        return value

    return check
