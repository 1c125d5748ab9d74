"""`sepme generate` (image grids, --compare) and `sepme eval` (the toy world's judge)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sepme_cli._params import BaseOpt, EraseListOpt, JsonOpt, VariantOpt, in_range, open_store
from sepme_cli._render import counted_progress, err, out, print_json, table

app = typer.Typer()

EraseOpt = EraseListOpt
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
        bool,
        typer.Option(
            "--compare",
            help="Two rows per prompt, same seeds: the bare base's above the composition's.",
        ),
    ] = False,
    variant: VariantOpt = None,
    erase: EraseOpt = None,
    plain: PlainOpt = False,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Render a labelled grid with the base's active composition (or a variant / --erase list).

    One row per prompt, N images across (seeds SEED … SEED+N-1); with --compare each prompt gets
    the bare base's row, then the composition's row below it, same seeds.

    Examples:

        $ sepme generate "a red circle on stripes" -o grid.png
        $ sepme generate "a painting by Van Gogh" "a cat" -o cmp.png --compare --n 4 --seed 7
        $ sepme generate "a red circle" -o plain.png --plain
    """
    from sepme_engine.generate import generate as run

    with counted_progress("generating", "img") as progress:
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
            progress=progress,
        )
    if json_out:
        print_json(report.to_dict())
        return
    out.print(report.path)
    for prompt, tokens, limit in report.truncated:
        err.print(
            f"[yellow]warning:[/] {prompt!r} is {tokens} tokens; {report.base} reads {limit} "
            "(with start/end): the rest had no effect"
        )
    err.print(
        f"{report.base}, erased: {', '.join(report.erased) or 'nothing'}; {report.steps} steps, guidance {report.guidance}"
    )


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _eval_rows(report: Any, base_report: Any | None) -> list[tuple[str, ...]]:
    from sepme_engine.toy.world import CONCEPTS, axis_of

    rows = []
    for c in CONCEPTS:
        full, bare, chance = report.full.get(c), report.bare.get(c), report.chance.get(c)
        lift = None if bare is None or chance is None else bare - chance
        row = [c, axis_of(c), _pct(full), _pct(bare), _pct(chance), _points(lift)]
        if base_report is not None:
            b_full, b_bare = base_report.full.get(c), base_report.bare.get(c)
            row += [
                _points(None if full is None or b_full is None else full - b_full),
                _points(None if bare is None or b_bare is None else bare - b_bare),
            ]
        rows.append(tuple(row))
    return rows


def _points(v: Any) -> str:
    return "" if v is None else f"{100 * v:+.1f}"


@app.command("eval")
def eval_(
    base: BaseOpt = None,
    n: Annotated[
        int, typer.Option("--n", help="Samples per prompt.", callback=in_range("n", 1, 10_000))
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed.", callback=in_range("seed"))] = 0,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Also judge the bare base (same seeds) and show the change in points.",
        ),
    ] = False,
    variant: VariantOpt = None,
    erase: EraseOpt = None,
    plain: PlainOpt = False,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Judge the toy world's fixed prompt set: per-concept accuracy, chance and lift.

    Examples:

        $ sepme eval --compare                     # the active composition against the bare toy base
        $ sepme eval --erase circle --n 16 --json
    """
    from sepme_engine.generate import evaluate_base

    with counted_progress("sampling and judging", "img") as progress:
        res = evaluate_base(
            open_store(),
            base=base,
            n_per_prompt=n,
            seed=seed,
            variant=variant,
            erase=erase,
            plain=plain,
            device=device,
            compare=compare,
            progress=progress,
        )
    if json_out:
        print_json(res.to_dict())
        return
    report = res.report
    title = (
        f"toy world, erased: {', '.join(res.erased) or 'nothing'} — {report.n_per_prompt} "
        f"samples/prompt, {report.sampler} {report.steps} steps, guidance {report.guidance}"
    )
    columns = ["concept", "axis", "full %", "bare %", "chance %", "bare lift"]
    if res.base_report is not None:
        columns += ["Δ full vs base", "Δ bare vs base"]
    out.print(table(title, columns, _eval_rows(report, res.base_report), drop=["axis"]))
    err.print(
        "full/bare %: judged right on full prompts / the one-word prompt; lift and Δ in points"
    )
    line = f"all three axes right on full prompts: {100 * report.all_correct:.1f}%"
    if res.base_report is not None:
        line += f" (base: {100 * res.base_report.all_correct:.1f}%)"
    seconds = report.seconds + (res.base_report.seconds if res.base_report is not None else 0)
    err.print(f"{line} ({seconds:.0f}s)")
