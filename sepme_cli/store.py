"""`sepme store …` and `sepme config …`: where the store is, verify, prune, effective settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sepme_cli._params import BaseOpt, DryRunOpt, ForceOpt, JsonOpt, open_store
from sepme_cli._render import err, human_size, out, print_json, step_progress, table
from sepme_engine.store import maintenance

store_app = typer.Typer(help="The local store: its path, verification and clean-up.")
config_app = typer.Typer(help="Settings from config.toml in the store root.")


@store_app.command("path")
def path() -> None:
    """Print the store root ($SEPME_HOME or the user data dir).

    Examples:

        $ sepme store path
        $ SEPME_HOME=/data/sepme sepme store path
    """
    out.print(str(open_store().root))


@store_app.command("verify")
def verify(json_out: JsonOpt = False) -> None:
    """Re-hash blobs, check manifests' references, report leftovers. Exit 1 if anything is wrong.

    Examples:

        $ sepme store verify
        $ sepme store verify --json
    """
    store = open_store()
    with step_progress("hashing blobs") as progress:
        report = maintenance.verify(store, progress=progress)
    if json_out:
        print_json(report.to_dict())
    elif report.ok:
        out.print(f"ok: {report.blobs_checked} blobs, {report.manifests_checked} manifests")
    else:
        out.print(
            table(
                None,
                ["problem", "path", "detail"],
                [(p.kind, p.path, p.detail) for p in report.problems],
            )
        )
        err.print(
            "leftovers and unreferenced blobs go with `sepme store prune`; re-add damaged entries"
        )
    if not report.ok:
        raise typer.Exit(1)


@store_app.command("prune")
def prune(dry_run: DryRunOpt = False, json_out: JsonOpt = False) -> None:
    """Remove unreferenced blobs, stale views and partial-write leftovers.

    Examples:

        $ sepme store prune --dry-run
        $ sepme store prune
    """
    report = maintenance.prune(open_store(), dry_run=dry_run)
    if json_out:
        print_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for p in report.removed:
        out.print(p)
    out.print(f"{verb} {len(report.removed)} item(s), {human_size(report.bytes_freed)}")


@store_app.command("export-increments")
def export_increments(
    folder: Annotated[Path, typer.Argument(help="A new folder to write the export to.")],
    concepts: Annotated[
        list[str] | None, typer.Argument(help="Only these concepts (default: all).")
    ] = None,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy the base's increments (manifests and blobs, bound to the base by digest) to FOLDER,
    for `sepme store import` on another machine or store.

    Examples:

        $ sepme store export-increments ./painters van-gogh monet --base sd15
        $ sepme store export-increments ./all-increments
    """
    from sepme_engine.transfer import export_increments as run

    report = run(open_store(), folder, base=base, concepts=concepts or None)
    _moved(report, json_out, f"exported {len(report.items)} increment(s) to {report.folder}")


@store_app.command("import")
def import_(
    folder: Annotated[
        Path, typer.Argument(help="A folder made by `sepme store export-increments`.")
    ],
    force: ForceOpt = False,
    no_apply: Annotated[
        bool,
        typer.Option("--no-apply", help="Do not activate the increments active in the source."),
    ] = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import increments exported from another store: digests checked, each bound to the base
    with the same digest here; nothing is written if any check fails.

    Examples:

        $ sepme store import ./painters --dry-run
        $ sepme store import ./painters --no-apply
    """
    from sepme_engine.transfer import import_increments

    report = import_increments(
        open_store(), folder, force=force, apply=not no_apply, dry_run=dry_run
    )
    new = sum(m.status == "imported" for m in report.items)
    verb = "would import" if dry_run else "imported"
    _moved(report, json_out, f"{verb} {new} increment(s), {len(report.items) - new} unchanged")


def _moved(report: Any, json_out: bool, summary: str) -> None:
    """A TransferReport: its `to_dict()` with --json, else a table and the summary."""
    if json_out:
        print_json(report.to_dict())
        return
    rows = [(m.base, m.concept, m.status, m.digest[:19]) for m in report.items]
    out.print(table(None, ["base", "concept", "status", "blob"], rows))
    err.print(summary)


def _value(v: object) -> str:
    if isinstance(v, list):
        return ", ".join(repr(x) for x in v) if v else "(none)"
    return str(v)


def _source(source: str, path: str) -> str:
    """`config.toml:12` for a line of the file (its full path is printed above the table)."""
    return "config.toml" + source[len(path) :] if source.startswith(path) else source


def _show_help() -> str:
    from rich.markup import escape

    from sepme_engine.config import config_help

    lines = config_help().splitlines()
    return (
        "Print the effective settings and where each one comes from.\n\n"
        "Settings are read from config.toml in the store root (`sepme store path`); command-line "
        "options override them. Keys, with an example each (docs/config.md has more):\n\n"
        + "\n".join(escape(line) for line in lines)
        + "\n\nExamples:\n\n$ sepme config show\n$ sepme config show --json"
    )


@config_app.command("show", help=_show_help())
def show(json_out: JsonOpt = False) -> None:
    """Print the effective settings and where each one comes from."""
    from sepme_engine.config import load_config

    cfg = load_config(open_store().root)
    if json_out:
        print_json(cfg.to_dict())
        return
    err.print(f"config file: {cfg.path}" + ("" if cfg.exists else " (absent: built-in defaults)"))
    rows = [(s.key, _value(s.value), _source(s.source, cfg.path)) for s in cfg.settings]
    out.print(table(None, ["setting", "value", "from"], rows))
