"""`sepme compose` and `sepme variants`: choose which increments are active."""

from __future__ import annotations

from typing import Annotated

import typer

from sepme_cli._params import BaseOpt, JsonOpt, open_store
from sepme_cli._render import out, print_json, table
from sepme_engine import compose as engine

app = typer.Typer()


@app.command("compose")
def compose(
    base: BaseOpt = None,
    erase: Annotated[
        list[str] | None,
        typer.Option("--erase", help="Concepts to add (comma-separated or repeated)."),
    ] = None,
    restore: Annotated[
        list[str] | None, typer.Option("--restore", help="Concepts to drop (restore).")
    ] = None,
    from_variant: Annotated[
        str | None, typer.Option("--from", help="Start from this saved variant.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Also save the result as this variant.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Change the base's active composition (erase = add, restore = drop) and print it."""
    result = engine.compose(
        open_store(),
        base,
        erase=erase or [],
        restore=restore or [],
        from_variant=from_variant,
        name=name,
    )
    if json_out:
        print_json(result.to_json())
        return
    out.print(f"{result.base}: erased {', '.join(result.active) or 'nothing'}")
    if result.added or result.removed:
        out.print(
            f"  added {', '.join(result.added) or '-'}; restored {', '.join(result.removed) or '-'}"
        )
    if result.saved_as:
        out.print(f"  saved as variant {result.saved_as}")


@app.command("variants")
def variants(base: BaseOpt = None, json_out: JsonOpt = False) -> None:
    """List the base's saved variants."""
    items = engine.list_variants(open_store(), base)
    if json_out:
        print_json([v.to_json() for v in items])
        return
    out.print(
        table(
            None,
            ["variant", "erased", "created"],
            [(v.name, ", ".join(v.active), v.created) for v in items],
        )
    )
