"""`sepme store …` and `sepme config …`: where the store is, verify, prune, effective settings."""

from __future__ import annotations

import typer

from sepme_cli._params import DryRunOpt, JsonOpt, open_store
from sepme_cli._render import err, human_size, out, print_json, step_progress, table
from sepme_engine.store import maintenance

store_app = typer.Typer(help="The local store: its path, verification and clean-up.")
config_app = typer.Typer(help="Settings from config.toml in the store root.")


@store_app.command("path")
def path() -> None:
    """Print the store root ($SEPME_HOME or the user data dir)."""
    out.print(str(open_store().root))


@store_app.command("verify")
def verify(json_out: JsonOpt = False) -> None:
    """Re-hash blobs, check manifests' references, report leftovers. Exit 1 if anything is wrong."""
    store = open_store()
    with step_progress("hashing blobs") as progress:
        report = maintenance.verify(store, progress=progress)
    if json_out:
        print_json(
            {
                "root": report.root,
                "ok": report.ok,
                "blobs_checked": report.blobs_checked,
                "manifests_checked": report.manifests_checked,
                "problems": [p.__dict__ for p in report.problems],
            }
        )
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
    """Remove unreferenced blobs, stale views and partial-write leftovers."""
    report = maintenance.prune(open_store(), dry_run=dry_run)
    if json_out:
        print_json(
            {
                "dry_run": report.dry_run,
                "removed": list(report.removed),
                "bytes_freed": report.bytes_freed,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    for p in report.removed:
        out.print(p)
    out.print(f"{verb} {len(report.removed)} item(s), {human_size(report.bytes_freed)}")


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
    )


@config_app.command("show", help=_show_help())
def show(json_out: JsonOpt = False) -> None:
    """Print the effective settings and where each one comes from."""
    from sepme_engine.config import load_config

    cfg = load_config(open_store().root)
    if json_out:
        print_json(
            {
                "path": cfg.path,
                "exists": cfg.exists,
                "settings": {s.key: {"value": s.value, "source": s.source} for s in cfg.settings},
            }
        )
        return
    err.print(f"config file: {cfg.path}" + ("" if cfg.exists else " (absent: built-in defaults)"))
    rows = [(s.key, _value(s.value), _source(s.source, cfg.path)) for s in cfg.settings]
    out.print(table(None, ["setting", "value", "from"], rows))
