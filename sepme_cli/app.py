"""The `sepme` command: composes one module per command group."""

from __future__ import annotations

from typing import Any

import typer
import typer.core

from sepme_cli import base, compose, erase, export, generate, inspect, store
from sepme_cli._errors import (
    SepmeGroup,
    install_broken_pipe_handler,
    install_log_handler,
    install_signal_handlers,
)
from sepme_cli._render import out
from sepme_engine import __version__


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """Flags take no value: show no type for them (typer 0.29 prints `<bool>`)."""
    if self.is_flag and not self.count:
        return None
    return _option_type(self, ctx)


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    cls=SepmeGroup,
    name="sepme",
    help="Separable multi-concept erasure for Stable Diffusion: erase, restore, compose, export.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


install_log_handler()


def _version(value: bool) -> None:
    if value:
        out.print(f"sepme {__version__}", markup=False)  # a closed pipe: as every output
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """sepme: erase concepts from Stable Diffusion, restore them, export the result."""


app.add_typer(erase.app)
app.add_typer(compose.app)
app.add_typer(inspect.app)
app.add_typer(export.app)
app.add_typer(generate.app)
app.add_typer(compose.variants_app, name="variants")
app.add_typer(base.app, name="base")
app.add_typer(store.store_app, name="store")
app.add_typer(store.config_app, name="config")


def main() -> None:
    import os
    import warnings

    install_signal_handlers()
    install_broken_pipe_handler()
    # library chatter would break the one-line error (a long prompt's tokenizer warning, torch's
    # note on a pickle's protocol): sepme reports these conditions itself
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    app(prog_name="sepme")
