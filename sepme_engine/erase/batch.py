"""Mass erasure: a list of concepts from a file, resumable, spread over processes.

`erase_list` is `erase(...)` (erase/run.py) over the list — the same all-known E_k as naming
every concept on the command line — with `resume` (a concept whose stored increment records the
same request is skipped) and `keep_going` (one failure does not stop the list). Under
`accelerate launch` (or any launcher that sets RANK / WORLD_SIZE) each process takes the
concepts at positions rank, rank + world, …; E_k does not depend on the split, so the increments
are the same whatever the number of processes. Each process saves its own increments under the
store lock; the rows are gathered so every rank knows the outcome of the whole list.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.errors import InvalidInput, NotFound, SepmeError
from sepme_engine.store import Store


@dataclass(frozen=True)
class ListEntry:
    concept: str  # the concept's text (its prompt; its store name is concept_name(concept))
    preserve: tuple[str, ...] = ()  # this line's own --preserve prompts
    line: int = 0


@dataclass(frozen=True)
class ListRow:
    """One concept of the list after the run: status 'erased', 'skipped' (stored earlier with
    the same request) or 'failed'."""

    concept: str
    status: str
    verdict: str = ""
    detail: str = ""
    iterations: int = 0
    wall_s: float = 0.0
    rank: int = 0
    error: SepmeError | None = None  # a failed row's error: its data, for an interface to word

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "error"}
        out["error"] = None if self.error is None else self.error.to_dict()
        return out


@dataclass(frozen=True)
class ListReport:
    base: str
    world: int
    rows: tuple[ListRow, ...]

    @property
    def failed(self) -> tuple[ListRow, ...]:
        return tuple(r for r in self.rows if r.status == "failed")

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "world": self.world, "rows": [r.to_dict() for r in self.rows]}


def parse_concept_file(path: Path | str) -> list[ListEntry]:
    """One concept a line; `#` starts a comment (a whole line, or after a space); blank lines
    are ignored; a line may end with `--preserve "PROMPT"` (repeatable) for that concept only."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(
            f"no concept file {path}", hint="give a text file with one concept a line"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"cannot read the concept file {path}: {exc}",
            hint="give a UTF-8 text file with one concept a line",
        ) from None
    entries: list[ListEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InvalidInput(
                f"{path}:{number}: {exc}", hint='close the quotes, e.g. --preserve "a dog"'
            ) from None
        if "--preserve" in words:
            at = words.index("--preserve")
            head, tail = words[:at], words[at:]
        else:
            head, tail = words, []
        stray = next((w for w in head if w.startswith("--")), None)
        if stray is not None:
            raise InvalidInput(
                f"{path}:{number}: unexpected {stray!r}: a line takes only --preserve",
                hint="give other settings on the command line; they apply to the whole list",
            )
        preserve: list[str] = []
        while tail:
            if tail[0] != "--preserve" or len(tail) < 2:
                raise InvalidInput(
                    f"{path}:{number}: unexpected {tail[0]!r} after the concept",
                    hint='write `CONCEPT --preserve "PROMPT"`, one concept a line',
                )
            preserve.append(tail[1])
            tail = tail[2:]
        concept = " ".join(head) if head else ""
        if not concept.strip():
            raise InvalidInput(
                f"{path}:{number}: no concept before --preserve",
                hint='write `CONCEPT --preserve "PROMPT"`',
            )
        entries.append(ListEntry(concept, tuple(preserve), number))
    if not entries:
        raise InvalidInput(
            f"the concept file {path} names no concept",
            hint="write one concept a line (`#` starts a comment)",
        )
    seen: dict[str, int] = {}
    from sepme_engine.increments import concept_name

    for e in entries:
        name = concept_name(e.concept)
        if name in seen:
            raise InvalidInput(
                f"{path}:{e.line}: {e.concept!r} is {name!r} again (line {seen[name]})",
                hint="name each concept once",
            )
        seen[name] = e.line
    return entries


def rank_world() -> tuple[int, int, str | None]:
    """(rank, world size, device) of this process: from accelerate's PartialState when a launcher
    set WORLD_SIZE > 1 (accelerate launch, torchrun) — gloo on CPU, NCCL with one GPU a process
    (device cuda:LOCAL_RANK) — else (0, 1, None)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return int(state.process_index), int(state.num_processes), str(state.device)


def share(entries: Sequence[ListEntry], rank: int, world: int) -> list[ListEntry]:
    """The entries of process `rank`: positions rank, rank + world, …"""
    return list(entries[rank::world])


def erase_list(
    store: Store,
    entries: Sequence[ListEntry],
    *,
    rank: int = 0,
    world: int = 1,
    gather: Callable[[list[ListRow]], list[ListRow]] | None = None,
    **kwargs: Any,
) -> ListReport:
    """Erase this process's share of `entries` (all of them when world is 1) with the list's
    all-known E_k; resumable; failures reported per concept. `kwargs` go to erase(...)
    (base, overrides, method, device, force, on_event, …). `gather` combines the rows of all
    processes (accelerate's gather_object under a launcher)."""
    from sepme_engine.bases import get_base
    from sepme_engine.erase.run import erase

    base = get_base(store, kwargs.pop("base", None)).name
    mine = share(entries, rank, world)
    rows: list[ListRow] = []
    from sepme_engine.increments import concept_name

    if mine:
        try:
            report = erase(
                store,
                [e.concept for e in mine],
                base=base,
                known=[e.concept for e in entries],
                preserve_for={e.concept: e.preserve for e in entries if e.preserve},
                resume=True,
                keep_going=True,
                **kwargs,
            )
        except SepmeError as exc:
            if gather is None:
                raise
            # under a launcher the other ranks wait at the gather: report, do not vanish
            rows = [
                ListRow(concept_name(e.concept), "failed", "", exc.message, rank=rank, error=exc)
                for e in mine
            ]
            return ListReport(base, world, tuple(gather(rows)))
        rows += [
            ListRow(o.concept, "erased", o.verdict, "", o.iterations, o.wall_s, rank)
            for o in report.outcomes
        ]
        rows += [
            ListRow(c, "skipped", "", "stored earlier, same request", rank=rank)
            for c in report.skipped
        ]
        rows += [
            ListRow(c, "failed", "", exc.message, rank=rank, error=exc) for c, exc in report.failed
        ]
    if gather is not None:
        rows = gather(rows)
    order = {concept_name(e.concept): i for i, e in enumerate(entries)}
    rows.sort(key=lambda r: order.get(r.concept, len(order)))
    return ListReport(base, world, tuple(rows))


def gather_rows(rows: list[ListRow]) -> list[ListRow]:
    """All processes' rows, on every process (accelerate.utils.gather_object)."""
    from accelerate.utils import gather_object

    return list(gather_object(rows))
