"""`sepme compose` and `sepme variants`: choose which increments are active."""

from __future__ import annotations

from typing import Annotated

import typer

from sepme_cli._complete import complete_concept, complete_variant
from sepme_cli._params import (
    BaseOpt,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    VariantArg,
    YesOpt,
    confirm,
    open_store,
)
from sepme_cli._render import err, out, print_json, table
from sepme_engine import compose as engine

app = typer.Typer()
variants_app = typer.Typer(
    help="Saved variants (named compositions): list, remove, rename.",
    invoke_without_command=True,
)


@app.command("compose")
def compose(
    base: BaseOpt = None,
    erase: Annotated[
        list[str] | None,
        typer.Option(
            "--erase",
            help="Concepts to add (comma-separated or repeated).",
            autocompletion=complete_concept,
        ),
    ] = None,
    restore: Annotated[
        list[str] | None,
        typer.Option(
            "--restore", help="Concepts to drop (restore).", autocompletion=complete_concept
        ),
    ] = None,
    from_variant: Annotated[
        str | None,
        typer.Option(
            "--from", help="Start from this saved variant.", autocompletion=complete_variant
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Also save the result as this variant (new, or --force)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing variant of that --name.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Change the base's active composition (erase = add, restore = drop) and print it.

    Examples:

        $ sepme compose                                 # print the active composition
        $ sepme compose --erase van-gogh,monet
        $ sepme compose --restore monet                 # van-gogh stays erased, exactly
        $ sepme compose --from painters --erase picasso --name painters2
    """
    result = engine.compose(
        open_store(),
        base,
        erase=erase or [],
        restore=restore or [],
        from_variant=from_variant,
        name=name,
        force=force,
    )
    if json_out:
        print_json(result.to_dict())
        return
    out.print(f"{result.base}: erased {', '.join(result.active) or 'nothing'}")
    if result.added or result.removed:
        out.print(
            f"  added {', '.join(result.added) or '-'}; restored {', '.join(result.removed) or '-'}"
        )
    if result.saved_as:
        out.print(f"  saved as variant {result.saved_as}")


def _list_variants(base: str | None, json_out: bool) -> None:
    items = engine.list_variants(open_store(), base)
    if json_out:
        print_json([v.to_dict() for v in items])
        return
    out.print(
        table(
            None,
            ["variant", "erased", "created"],
            [(v.name, ", ".join(v.active), v.created) for v in items],
        )
    )
    if not items:
        err.print("none yet: save one with `sepme compose --erase NAME --name VARIANT`")


@variants_app.callback()
def variants(ctx: typer.Context, base: BaseOpt = None, json_out: JsonOpt = False) -> None:
    """List the base's saved variants (or `rm`/`mv` one).

    Examples:

        $ sepme variants
        $ sepme variants --base sd15 --json
        $ sepme variants mv painters artists
    """
    if ctx.invoked_subcommand is None:
        _list_variants(base, json_out)


@variants_app.command("list")
def list_(base: BaseOpt = None, json_out: JsonOpt = False) -> None:
    """List the base's saved variants.

    Examples:

        $ sepme variants list
        $ sepme variants list --json
    """
    _list_variants(base, json_out)


variants_app.command("ls", hidden=True, help="Alias of `list`.")(list_)


@variants_app.command("rm")
def rm(
    name: VariantArg,
    base: BaseOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove a saved variant (its increments stay in the store).

    Examples:

        $ sepme variants rm painters --dry-run
        $ sepme variants rm painters --yes
    """
    store = open_store()
    v = engine.remove_variant(store, base, name, dry_run=True)
    what = f"variant {v.name} of {v.base} (erased {', '.join(v.active) or 'nothing'})"
    if dry_run:
        out.print(f"would remove {what}")
        return
    confirm(f"Remove {what}?", yes)
    engine.remove_variant(store, base, v.name)
    if json_out:
        print_json({"removed": v.to_dict()})
        return
    out.print(f"removed {what}")


@variants_app.command("mv")
def mv(
    old: Annotated[
        str, typer.Argument(help="Current variant name.", autocompletion=complete_variant)
    ],
    new: Annotated[str, typer.Argument(help="New variant name.")],
    base: BaseOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rename a saved variant (refuses to replace another without --force).

    Examples:

        $ sepme variants mv painters artists
    """
    v = engine.rename_variant(open_store(), base, old, new, force=force)
    if json_out:
        print_json(v.to_dict())
        return
    out.print(f"renamed variant {old} to {v.name} on {v.base}")
