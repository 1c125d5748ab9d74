"""`sepme generate` (image grids, --compare) and `sepme eval` (the toy world's judge)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sepme_cli._params import BaseOpt, JsonOpt, in_range, open_store
from sepme_cli._render import err, out, print_json, table

app = typer.Typer()

VariantOpt = Annotated[str | None, typer.Option("--variant", help="Use this saved variant.")]
EraseOpt = Annotated[
    list[str] | None, typer.Option("--erase", help="Use these increments (comma-separated).")
]
PlainOpt = Annotated[bool, typer.Option("--plain", help="The bare base, no increments.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]


@app.command("generate")
def generate(
    prompts: Annotated[list[str], typer.Argument(help="Prompt(s); one grid row each.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")],
    base: BaseOpt = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the first image in each row.", callback=in_range("seed"))
    ] = 0,
    n: Annotated[
        int, typer.Option("--n", help="Images per prompt.", callback=in_range("n", 1, 1024))
    ] = 4,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Sampler steps (default per base).", callback=in_range("steps", 1, 10_000)
        ),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            help="Guidance scale (default per base).", callback=in_range("guidance", 0, 100)
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Base and composition side by side, same seeds.")
    ] = False,
    variant: VariantOpt = None,
    erase: EraseOpt = None,
    plain: PlainOpt = False,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Render a labelled grid with the base's active composition (or a variant / --erase list)."""
    from sepme_engine.preview import generate as run

    with err.status("generating…"):
        report = run(
            open_store(),
            prompts,
            output,
            base=base,
            seed=seed,
            n=n,
            steps=steps,
            guidance=guidance,
            compare=compare,
            variant=variant,
            erase=erase,
            plain=plain,
            device=device,
        )
    if json_out:
        print_json(report.to_json())
        return
    out.print(report.path)
    err.print(
        f"{report.base}, erased: {', '.join(report.erased) or 'nothing'}; {report.steps} steps, guidance {report.guidance}"
    )


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.1f}"


@app.command("eval")
def eval_(
    base: BaseOpt = None,
    n: Annotated[
        int, typer.Option("--n", help="Samples per prompt.", callback=in_range("n", 1, 10_000))
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed.", callback=in_range("seed"))] = 0,
    variant: VariantOpt = None,
    erase: EraseOpt = None,
    plain: PlainOpt = False,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Judge the toy world's fixed prompt set: per-concept accuracy, chance and lift."""
    from sepme_engine.preview import evaluate_base

    with err.status("generating and judging the toy prompt set…"):
        erased, report = evaluate_base(
            open_store(),
            base=base,
            n_per_prompt=n,
            seed=seed,
            variant=variant,
            erase=erase,
            plain=plain,
            device=device,
        )
    from sepme_engine.toy.world import CONCEPTS, axis_of

    data = report.to_dict()
    data["erased"] = list(erased)
    if json_out:
        print_json(data)
        return
    rows = []
    for c in CONCEPTS:
        full, bare, chance = report.full.get(c), report.bare.get(c), report.chance.get(c)
        lift = None if bare is None or chance is None else bare - chance
        rows.append(
            (
                c,
                axis_of(c),
                _pct(full),
                _pct(bare),
                _pct(chance),
                "" if lift is None else f"{100 * lift:+.1f}",
            )
        )
    title = (
        f"toy world, erased: {', '.join(erased) or 'nothing'} — {report.n_per_prompt} samples/prompt, "
        f"{report.sampler} {report.steps} steps, guidance {report.guidance}"
    )
    out.print(
        table(
            title,
            [
                "concept",
                "axis",
                "full prompts %",
                "bare prompt %",
                "chance %",
                "bare lift (points)",
            ],
            rows,
        )
    )
    err.print(
        f"all three axes right on full prompts: {100 * report.all_correct:.1f}% ({report.seconds:.0f}s)"
    )
