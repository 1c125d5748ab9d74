"""Shared option types, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from sepme_engine.store import Store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing entry or file.")]
BaseOpt = Annotated[
    str | None,
    typer.Option("--base", "-b", help="Base to use (default: `sepme base use`, else toy)."),
]


def open_store() -> Store:
    """The store at $SEPME_HOME (or the user data dir), announcing waits for its lock."""
    from sepme_cli._render import err

    store = Store()
    store.on_lock_wait = lambda msg: err.print(f"[yellow]{msg}[/]")
    return store


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
