"""`sepme inspect`: increment norms, correlations and decoupling residuals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sepme_cli._complete import complete_concept
from sepme_cli._params import BaseOpt, JsonOpt, open_store
from sepme_cli._render import err, out, print_json, table

app = typer.Typer()


@app.command("inspect")
def inspect(
    concepts: Annotated[
        list[str] | None,
        typer.Argument(
            help="Increments to inspect (default: all).", autocompletion=complete_concept
        ),
    ] = None,
    base: BaseOpt = None,
    layers: Annotated[
        bool, typer.Option("--layers", help="Per-layer norms for to_k and to_v.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write heat maps of both matrices to this PNG.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Norms, correlations and decoupling residuals of the base's increments.

    Examples:

        $ sepme inspect
        $ sepme inspect van-gogh monet --layers
        $ sepme inspect --plot increments.png --json
    """
    from sepme_engine import inspect as engine

    report = engine.inspect(open_store(), concepts or [], base=base)
    if plot is not None:
        engine.plot(report, plot)
        err.print(f"heat maps written to {plot}")
    if json_out:
        print_json(report.to_dict(layers=layers))
        return
    rows = [
        (
            s.concept,
            s.method,
            f"{s.norm:.4g}",
            f"{s.rel_norm:.3e}",
            f"{s.norm_to_k:.4g}",
            f"{s.norm_to_v:.4g}",
            s.m_k,
            s.iterations,
            s.stop_reason,
        )
        for s in report.increments
    ]
    out.print(
        table(
            f"increments on {report.base}",
            ["concept", "method", "‖ΔW‖", "‖ΔW‖/‖W‖", "to_k", "to_v", "m", "iterations", "stop"],
            rows,
            drop=["stop", "iterations", "to_k", "to_v", "method", "m"],
        )
    )
    if layers:
        for s in report.increments:
            out.print(
                table(
                    f"{s.concept}: per layer",
                    ["layer", "‖ΔW‖", "‖ΔW‖/‖W‖"],
                    [(la.layer, f"{la.norm:.4g}", f"{la.rel_norm:.3e}") for la in s.layers],
                )
            )
    names = list(report.concepts)
    out.print(
        table(
            "correlation (cosine of flattened ΔW)",
            ["", *names],
            [
                (n, *[f"{v:+.3f}" for v in row])
                for n, row in zip(names, report.correlation, strict=True)
            ],
        )
    )
    out.print(
        table(
            "decoupling residual R (row i changes column j)",
            ["", *names],
            [
                (n, *[f"{v:.1e}" for v in row])
                for n, row in zip(names, report.residual, strict=True)
            ],
        )
    )
    err.print("R[i][j] = max over layers of ‖ΔW_i e(c_j)ᵀ‖ / ‖W e(c_j)ᵀ‖")
