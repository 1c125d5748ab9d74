"""Consoles and small rendering helpers. Data goes to stdout, everything else to stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import ProgressColumn
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """`--json`: a result's `to_dict()` (JSON-safe by contract: no `default=str` to hide a
    value that is not) as indented JSON on stdout."""
    out.print_json(json.dumps(data), indent=2, highlight=False)


def _min_width(value: str) -> int:
    """The narrowest a cell can be without breaking a word: its longest word."""
    from rich.cells import cell_len

    return max((cell_len(w) for w in value.split()), default=0)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    drop: Sequence[str] = (),
    width: int | None = None,
) -> Table:
    """A table that fits the terminal (`width`, default stdout's) without breaking a word:
    columns named in `drop` go, first named first, until every column's longest word fits;
    the others wrap at spaces. (--json output keeps every field.)"""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    keep = list(range(len(columns)))
    budget = width or out.width

    def needed(idx: list[int]) -> int:
        # each column: its longest word + 2 padding + 1 border; one more border at the end
        return 1 + sum(
            3 + max([_min_width(columns[i]), *(_min_width(r[i]) for r in cells)]) for i in idx
        )

    for name in drop:
        if needed(keep) <= budget:
            break
        if name in columns:
            keep.remove(list(columns).index(name))
    t = Table(title=title, title_justify="left", header_style="bold")
    for i in keep:
        # fold only a single word wider than the whole terminal (a long path)
        t.add_column(columns[i], overflow="fold")
    for r in cells:
        t.add_row(*[r[i] for i in keep])
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


def progress_columns(unit: str = "", *extra: Any) -> tuple[Any, ...]:
    """The columns of every counted bar: what, bar, done/total, rate, ETA — about 70 characters
    with a 20-character description, so a bar fits 80 columns without "…". The ETA column shows
    "-:--:--" until a rate is measured (no guess before the first items are done)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return (
        TextColumn("{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        *extra,
        RateColumn(unit),
        TimeRemainingColumn(),
    )


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second), '' until known."""

    def __init__(self, unit: str = "") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        unit = f" {self.unit}" if self.unit else ""
        if speed >= 1:
            return Text(f"{speed:.1f}{unit}/s")
        return Text(f"{1 / speed:.1f} s/{self.unit or 'item'}")


@contextmanager
def _bar(description: str, columns: Sequence[Any]) -> Iterator[Any]:
    """A transient bar on stderr with these columns; yields update(done, total)."""
    from rich.progress import Progress

    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: float, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def counted_progress(description: str, unit: str = "", *extra: Any) -> Any:
    """A counted bar (done/total, rate, ETA) for any long operation: sampling, evaluation,
    hashing, export; `sepme erase` can build its own from `progress_columns`."""
    return _bar(description, progress_columns(unit, *extra))


def byte_progress(description: str) -> Any:
    """Progress in bytes (imports, copies): done/total bytes, speed, ETA."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=16),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return _bar(description, columns)


def step_progress(description: str) -> Any:
    """Progress in steps (hashing, tensors written)."""
    return counted_progress(description)
