"""`sepme base …`: add, list, show, rm, use."""

from __future__ import annotations

from typing import Annotated

import typer

from sepme_cli._params import BaseArg, DryRunOpt, ForceOpt, JsonOpt, YesOpt, confirm, open_store
from sepme_cli._render import byte_progress, err, human_size, out, print_json, short, table
from sepme_engine import bases

app = typer.Typer(help="Base checkpoints: add, list, show, remove, choose the default.")


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Name for the base (a slug, e.g. sd15).")],
    source: Annotated[
        str | None,
        typer.Argument(
            help="A diffusers folder, an A1111/ComfyUI .safetensors file, or a hub id. "
            "Omit for well-known names (sd14, sd15, sd2-base, sd2, sd21-base, sd21)."
        ),
    ] = None,
    link: Annotated[
        bool, typer.Option("--link", help="Register by reference instead of copying.")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Accept .ckpt/.bin pickles (loaded weights_only)."),
    ] = False,
    prediction_type: Annotated[
        str | None,
        typer.Option("--prediction-type", help="Override detection: epsilon or v_prediction."),
    ] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import a base checkpoint into the store.

    Examples:

        $ sepme base add sd15                                  # a well-known name: from the hub
        $ sepme base add mymodel ~/models/mymodel.safetensors  # an A1111/ComfyUI file
        $ sepme base add big /data/sd21-folder --link           # by reference, not copied
    """
    store = open_store()
    with byte_progress(f"importing {name}") as progress:
        info = bases.add_base(
            store,
            name,
            source,
            link=link,
            allow_pickle=allow_pickle,
            prediction_type=prediction_type,
            force=force,
            progress=progress,
        )
    if json_out:
        print_json(info.to_dict())
        return
    how = "linked" if info.linked else "copied"
    out.print(
        f"added base {info.name} ({info.arch}, {info.prediction_type}, {how}) {short(info.base_digest)}"
    )
    err.print(
        f"use it with `--base {info.name}`, or make it the default: `sepme base use {info.name}`"
    )


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List the bases in the store (* marks the default).

    Examples:

        $ sepme base list
        $ sepme base list --json
    """
    infos = bases.list_bases(open_store())
    if json_out:
        print_json([i.to_dict() for i in infos])
        return
    rows = [
        (
            ("* " if i.is_default else "  ") + i.name,
            i.arch,
            i.prediction_type,
            i.source_type + (" (linked)" if i.linked and not i.builtin else ""),
            human_size(i.size),
            short(i.base_digest),
            len(i.cross_attn_layers),
        )
        for i in infos
    ]
    out.print(
        table(
            None,
            ["name", "arch", "prediction", "source", "size", "digest", "k/v layers"],
            rows,
            drop=["k/v layers", "digest", "source", "size"],
        )
    )


app.command("ls", hidden=True, help="Alias of `list`.")(list_)


@app.command("show")
def show(name: BaseArg, json_out: JsonOpt = False) -> None:
    """Show one base in full.

    Examples:

        $ sepme base show toy
        $ sepme base show sd15 --json
    """
    info = bases.get_base(open_store(), name)
    if json_out:
        print_json(info.to_dict())
        return
    rows = [
        ("name", info.name + (" (default)" if info.is_default else "")),
        ("architecture", info.arch),
        ("prediction type", info.prediction_type),
        ("source", f"{info.source_type}: {info.origin}"),
        ("stored", "by reference" if info.linked else "copied into the store"),
        ("digest", info.base_digest),
        ("size", human_size(info.size)),
        ("text width", info.text_width),
        ("tokenizer length", info.tokenizer_max_length),
        ("cross-attn k/v layers", len(info.cross_attn_layers)),
        ("created", info.created),
    ]
    rows += [("note", n) for n in info.notes]
    out.print(table(None, ["field", "value"], rows))


@app.command("rm")
def rm(
    name: BaseArg,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
) -> None:
    """Remove a base with its increments and variants (blobs go with `sepme store prune`).

    Examples:

        $ sepme base rm sd15 --dry-run
        $ sepme base rm sd15 --yes && sepme store prune
    """
    store = open_store()
    plan = bases.remove_base(store, name, dry_run=True)
    what = (
        f"base {name} with {len(plan.increments)} increment(s) and {len(plan.variants)} variant(s)"
    )
    if dry_run:
        out.print(f"would remove {what}")
        return
    confirm(f"Remove {what}?", yes)
    bases.remove_base(store, name)
    out.print(f"removed {what}")
    err.print("free the disk space with `sepme store prune`")


@app.command("use")
def use(name: BaseArg) -> None:
    """Make NAME the default base for later commands.

    Examples:

        $ sepme base use sd15
        $ sepme base use toy            # back to the built-in toy base
    """
    info = bases.use_base(open_store(), name)
    out.print(f"default base: {info.name}")
