"""Consoles and small rendering helpers. Data goes to stdout, everything else to stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str), indent=2, highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    return t


def human_size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def short(digest: str, n: int = 12) -> str:
    return digest.split(":", 1)[-1][:n]


@contextmanager
def _progress(description: str, *columns: Any) -> Iterator[Any]:
    """A transient progress bar on stderr; yields a callback(done, total)."""
    from rich.progress import BarColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        *columns,
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def byte_progress(description: str) -> Any:
    """Progress in bytes (imports, copies)."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    return _progress(description, DownloadColumn(), TransferSpeedColumn())


def step_progress(description: str) -> Any:
    """Progress in steps (hashing, tensors written)."""
    from rich.progress import MofNCompleteColumn

    return _progress(description, MofNCompleteColumn())
