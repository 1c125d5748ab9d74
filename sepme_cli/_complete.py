"""Shell completion of names from the store: bases, concepts, variants, export formats.

Runs on every <TAB>: reads manifests only (no torch, no model), and never fails — a broken or
missing store completes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import typer

FORMATS = ("ldm", "diffusers", "lora")  # sepme_engine.export.run.FORMATS (a test keeps them equal)


def _store() -> Any:
    from sepme_engine.store import Store

    return Store()


def _base_of(ctx: Any) -> str:
    from sepme_engine.bases import default_base_name

    chosen = ctx.params.get("base")
    return str(chosen) if chosen else default_base_name(_store())


def _match(names: Iterable[str], incomplete: str) -> list[str]:
    """Names starting with `incomplete`; after a comma, complete the last item of the list."""
    head, sep, last = incomplete.rpartition(",")
    prefix, taken = head + sep, set(head.split(","))
    return [prefix + n for n in sorted(set(names) - taken) if n.startswith(last)]


def _safe(fn: Callable[[Any], Iterable[str]]) -> Callable[..., list[str]]:
    """A typer `autocompletion` callback over `fn(ctx)`'s names."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        try:
            return _match(fn(ctx), incomplete)
        except Exception:  # completion must never print a traceback into the shell
            return []

    return complete


def _bases(_ctx: Any) -> list[str]:
    from sepme_engine.bases import list_bases

    return [b.name for b in list_bases(_store())]


def _concepts(ctx: Any) -> list[str]:
    base = _base_of(ctx)
    return [k.split("/", 1)[1] for k in _store().list_manifests("increments", base)]


def _variants(ctx: Any) -> list[str]:
    base = _base_of(ctx)
    return [k.split("/", 1)[1] for k in _store().list_manifests("variants", base)]


complete_base = _safe(_bases)
complete_concept = _safe(_concepts)
complete_variant = _safe(_variants)
complete_format = _safe(lambda _ctx: FORMATS)
