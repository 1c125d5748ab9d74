"""`sepme erase`, `sepme list`, `sepme show`, `sepme rm`: train and manage increments."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from sepme_cli._errors import next_step
from sepme_cli._params import (
    BaseOpt,
    ConceptArg,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    YesOpt,
    confirm,
    in_range,
    open_store,
)
from sepme_cli._render import err, out, print_json, table
from sepme_engine.erase import names as method_names
from sepme_engine.errors import SepmeError

app = typer.Typer()
# `--method`'s choices: the registered methods (sepme_engine/erase/__init__.py)
Method = Enum("Method", [(n, n) for n in method_names()], type=str)  # type: ignore[misc]


def not_for_method(method: str, options: dict[str, Any], exc: SepmeError) -> str:
    """The usage error for options `method` does not take, in the command line's words."""
    from sepme_engine.erase.settings import method_module, words

    known = words(method_module(method))
    bad = [k for k, v in options.items() if v is not None and k not in known]
    if not bad:  # not that refusal
        return f"{exc}; {next_step(exc)}"
    flag = {k: "--" + k.replace("_", "-") for k in options}
    takes = ", ".join(flag[k] for k in options if k in known) or "none of these options"
    return (
        f"{', '.join(flag[k] for k in bad)} {'does' if len(bad) == 1 else 'do'} not apply to "
        f"--method {method}; {method} takes {takes}; drop the option or choose another method"
    )


def advice_words(o: Any) -> str:
    """The next step for an outcome's verdict advice (erase/verdict.py ADVICE), as options."""
    if o.advice == "raise-steps":
        cap = "the run reached its iteration cap"
        if o.suggested_steps is not None:
            cap += f"; e.g. --steps {o.suggested_steps}"
        return f"raise --steps ({cap})" + (", or --until-erased" if o.repeatable else "")
    if o.advice == "use-sepme":
        return "use --method sepme (closed form + G-CiRs iterations)"
    if o.advice == "lower-tau":
        lower = "a lower --tau"
        if o.suggested_tau is not None:
            lower += f" (e.g. --tau={o.suggested_tau:.1e})"
        return ("rerun with --until-erased, or " if o.repeatable else "rerun with ") + lower
    return str(o.advice)


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def step_stats(iteration: int, momentum: float, tau: float, rate: float) -> str:
    """The erase line's statistics, ≤ 44 characters: the iteration, the momentum m_n of L_cor and
    the threshold τ it must fall below (the stop SepME waits for), and the speed."""
    arrow = "<" if momentum < tau else "≥"
    return f"it {iteration:>4}  m {momentum:+.1e} {arrow} τ {tau:+.0e}  {rate:4.1f} it/s"


@contextmanager
def _progress() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn

    # Fits 80 columns (concept names are cut to 14 characters): "circle: images ━━━━━━━━━━ 8/8"
    # while the training images are drawn, then "circle: erasing ━━━━━━━━━━ it   86  m -9.1e-04 <
    # τ -1e-03  4.2 it/s" (no ETA against the cap: SepME stops when the momentum m_n falls below
    # τ, usually long before the cap; the bar pulses).
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=10),
        TextColumn("{task.fields[stats]}"),
        console=err,
    ) as bar:
        tasks: dict[tuple[str, str], Any] = {}

        def on_event(ev: Any) -> None:
            if ev.kind == "images":
                key = (ev.concept, "images")
                if key not in tasks:
                    tasks[key] = bar.add_task(
                        f"{_short(ev.concept)}: images", total=ev.total, stats=""
                    )
                bar.update(
                    tasks[key], completed=ev.done, total=ev.total, stats=f"{ev.done}/{ev.total}"
                )
            elif ev.kind == "round":
                i = ev.info
                tasks.pop((ev.concept, "train"), None)
                err.print(
                    f"{ev.concept}: {i['verdict']} — training again "
                    f"(round {i['round'] + 1} of at most {i['rounds'] + 1}: τ {i['tau']:+.1e}, "
                    f"cap {i['steps']})"
                )
            elif ev.kind == "step":
                key = (ev.concept, "train")
                s = ev.info
                if key not in tasks:
                    # a bar without a total: the line is about m_n against τ, not the cap
                    tasks[key] = bar.add_task(
                        f"{_short(ev.concept)}: erasing", total=None, stats="", visible=True
                    )
                rate = s.iteration / s.elapsed_s if s.elapsed_s > 0 else 0.0
                if s.tau is not None:  # the step record carries the threshold it stops on
                    stats = step_stats(s.iteration, s.momentum, s.tau, rate)
                else:
                    stats = f"it {s.iteration:>4}  loss {s.loss:.2e}  {rate:4.1f} it/s"
                bar.update(tasks[key], completed=s.iteration, stats=stats)
            elif ev.kind == "done":
                key = (ev.concept, "train")
                if key in tasks:
                    bar.update(tasks[key], total=ev.info.iterations, completed=ev.info.iterations)

        yield on_event


@app.command("erase")
def erase(
    concepts: Annotated[
        list[str] | None,
        typer.Argument(help="Concept(s) to erase; several = all-known scenario."),
    ] = None,
    base: BaseOpt = None,
    prompt: Annotated[
        str | None, typer.Option(help="Prompt text for the concept (default: the concept).")
    ] = None,
    preserve: Annotated[
        list[str] | None,
        typer.Option(
            "--preserve",
            help="A prompt the increment must not touch (repeatable); added to the base "
            "profile's default preserve prompts (toy: its 13 concepts; SD: none).",
        ),
    ] = None,
    no_default_preserve: Annotated[
        bool,
        typer.Option(
            "--no-default-preserve",
            help="Leave the profile's default preserve prompts out of E_k.",
        ),
    ] = False,
    steps: Annotated[
        int | None, typer.Option(help="Iteration cap.", callback=in_range("steps"))
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Adam learning rate on the coefficients.", callback=in_range("lr")),
    ] = None,
    tau: Annotated[
        float | None,
        typer.Option(
            help="Early-stopping threshold on the momentum m_n.", callback=in_range("tau")
        ),
    ] = None,
    lam: Annotated[
        float | None, typer.Option(help="L1 weight λ.", callback=in_range("lam"))
    ] = None,
    beta: Annotated[
        float | None, typer.Option(help="Coefficient scale β.", callback=in_range("beta"))
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed.", callback=in_range("seed"))
    ] = None,
    images: Annotated[
        int | None,
        typer.Option(
            help="Training images generated from the concept prompt.", callback=in_range("images")
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Frozen weights on GPU: auto, fp32, fp16, bf16.")
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            help="sepme (closed-form start + G-CiRs iterations), sepme-cf (the closed form "
            "alone, no UNet pass), esd-x, fmn or uce. Options a method does not take are "
            "refused.",
        ),
    ] = Method("sepme"),
    init: Annotated[
        str | None,
        typer.Option(help="SepME's start: closed-form (default) or zero (the paper's recipe)."),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="The closed form maps the concept's keys/values onto this prompt's "
            '(default: the blank prompt "").'
        ),
    ] = None,
    until_erased: Annotated[
        bool,
        typer.Option(
            "--until-erased",
            help="While the verdict is not 'erased', train again with a lower τ (twice the "
            "cap if the cap was reached), at most `until_rounds` (3) more times.",
        ),
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Skip the verdict measured after training."),
    ] = False,
    no_apply: Annotated[
        bool, typer.Option("--no-apply", help="Store only; do not add to the active composition.")
    ] = False,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from-file",
            help="Erase the concepts listed in this file (one a line, `#` comments, optional "
            '`--preserve "PROMPT"` per line), all-known; resumable: a rerun skips the concepts '
            "already stored with the same settings and E_k.",
        ),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(
            help="With --from-file: `accelerate` starts --num-processes processes "
            "(`accelerate launch`), each erasing a disjoint share of the list.",
        ),
    ] = None,
    num_processes: Annotated[
        int, typer.Option("--num-processes", min=1, help="Processes for --launcher.")
    ] = 2,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a per-concept increment that erases CONCEPT from the base.

    Examples:

        $ sepme erase "Van Gogh"                             # on the default base
        $ sepme erase circle stripes --base toy              # several: all-known, decoupled
        $ sepme erase "Van Gogh" --preserve "a painting by Monet" --tau 1e-3
        $ sepme erase --from-file concepts.txt --base sd15   # a list, resumable
    """
    from sepme_engine.erase.run import erase as run_erase
    from sepme_engine.erase.settings import check_options
    from sepme_engine.errors import InvalidInput

    overrides = {
        "steps": steps,
        "lr": lr,
        "tau": tau,
        "lam": lam,
        "beta": beta,
        "seed": seed,
        "images": images,
        "init": init,
        "anchor": anchor,
    }
    try:
        check_options(method.value, overrides)
    except InvalidInput as exc:  # e.g. --tau with --method esd-x: a usage error
        raise typer.BadParameter(not_for_method(method.value, overrides, exc)) from None
    store = open_store()
    common: dict[str, Any] = dict(  # what a list run and a single run both pass to erase()
        base=base,
        prompt=prompt,
        preserve=preserve or [],
        use_default_preserve=not no_default_preserve,
        overrides=overrides,
        method=method.value,
        device=device,
        dtype=dtype,
        apply=not no_apply,
        force=force,
        until_erased=until_erased,
        verify=not no_verify,
    )
    if from_file is not None or launcher is not None:
        _erase_list(
            store,
            concepts or [],
            from_file,
            launcher,
            num_processes,
            json_out,
            **common,
        )
        return
    with _progress() as on_event:
        report = run_erase(store, concepts or [], on_event=on_event, **common)
    if json_out:
        print_json(report.to_dict())
        return
    rows = [
        (
            o.concept,
            o.verdict or "not checked",
            _evidence(o),
            o.iterations,
            o.stop_reason,
            o.m_k,
            o.unet_passes_data + o.unet_passes_training + o.unet_passes_verdict,
            f"{o.wall_s:.1f}s",
        )
        for o in report.outcomes
    ]
    out.print(
        table(
            f"erased on {report.base} ({report.device}, {report.dtype})",
            ["concept", "verdict", "measured", "its", "stop", "m_k", "UNet passes", "time"],
            rows,
        )
    )
    for o in report.outcomes:
        if o.held_softly:
            err.print(
                f"{o.concept}: its neighbours left it almost no room, so "
                f"{', '.join(o.held_softly)} {'is' if len(o.held_softly) == 1 else 'are'} held "
                "softly, not exactly (restoring them leaves a small change)"
            )
        if o.verdict and o.verdict != "erased":
            err.print(f"{o.concept}: {o.verdict} — next: {advice_words(o)}")
    if report.applied:
        err.print(
            f"active on {report.base}: {', '.join(report.active)} — restore with `sepme compose --restore NAME`"
        )
    else:
        err.print(
            "stored only; activate with `sepme compose --erase "
            + ",".join(o.concept for o in report.outcomes)
            + "`"
        )


def _launch(processes: int) -> None:
    """Run this same command under `accelerate launch` with `processes` processes (one machine;
    for several, run `accelerate launch` yourself, README "Mass erasure")."""
    import subprocess
    import sys

    args, skip = [], 0
    for a in sys.argv[1:]:
        if skip:
            skip -= 1
        elif a in ("--launcher", "--num-processes"):
            skip = 1
        elif not a.startswith(("--launcher=", "--num-processes=")):
            args.append(a)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "sepme_cli", *args,
    ]  # fmt: skip
    err.print(f"starting {processes} processes: accelerate launch … -m sepme_cli {' '.join(args)}")
    code = subprocess.call(cmd)
    if code:
        raise typer.Exit(code)


def _erase_list(
    store: Any,
    concepts: list[str],
    from_file: Path | None,
    launcher: str | None,
    processes: int,
    json_out: bool,
    **kwargs: Any,
) -> None:
    """`sepme erase --from-file`: the list's share of this process, the summary of all."""
    from sepme_engine.erase.batch import erase_list, gather_rows, parse_concept_file, rank_world
    from sepme_engine.errors import InvalidInput

    if from_file is None:
        raise InvalidInput("--launcher spreads a list", hint="add --from-file concepts.txt")
    if concepts:
        raise InvalidInput(
            "name the concepts either on the command line or in --from-file, not both",
            hint="add them to the file",
        )
    if kwargs["prompt"] is not None:
        raise InvalidInput(
            "--prompt applies to one concept; a list names its prompts line by line",
            hint="write the prompt text on the concept's line",
        )
    if launcher is not None and launcher != "accelerate":
        raise InvalidInput(f"unknown launcher {launcher!r}", hint="use --launcher accelerate")
    kwargs.pop("prompt")
    entries = parse_concept_file(from_file)
    import os

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # already under a launcher
    if launcher == "accelerate" and processes > 1 and not launched:
        _launch(processes)
        return
    rank, world, rank_device = rank_world()
    if rank_device is not None and kwargs["device"] in (None, "auto", "cuda"):
        kwargs["device"] = rank_device  # one GPU a process
    if world > 1:
        err.print(
            f"process {rank} of {world}: {len(entries[rank::world])} of {len(entries)} concepts"
        )
    if rank == 0:
        with _progress() as on_event:
            report = erase_list(
                store,
                entries,
                rank=rank,
                world=world,
                gather=gather_rows if world > 1 else None,
                on_event=_with_list_lines(on_event, 0, world),
                **kwargs,
            )
    else:
        report = erase_list(
            store,
            entries,
            rank=rank,
            world=world,
            gather=gather_rows,
            on_event=_with_list_lines(None, rank, world),
            **kwargs,
        )
    if rank == 0:
        if json_out:
            data = report.to_dict()
            for row, r in zip(data["rows"], report.rows, strict=True):
                row["next_step"] = next_step(r.error) if r.error is not None else None
            print_json(data)
        else:
            rows = [
                (r.concept, r.status, r.verdict or "–", r.iterations or "–", f"{r.wall_s:.1f}s",
                 r.rank, _row_detail(r))
                for r in report.rows
            ]  # fmt: skip
            out.print(
                table(
                    f"{len(entries)} concepts on {report.base} ({world} process(es))",
                    ["concept", "status", "verdict", "its", "time", "rank", "detail"],
                    rows,
                )
            )
            counts = {
                s: sum(r.status == s for r in report.rows) for s in ("erased", "skipped", "failed")
            }
            err.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if report.failed:
        raise typer.Exit(1)


def _row_detail(row: Any) -> str:
    """A list row's detail: a failed row's message and the CLI's next step for its error."""
    step = next_step(row.error) if row.error is not None else None
    return row.detail + (f" — {step}" if step else "")


def _with_list_lines(on_event: Any, rank: int, world: int) -> Any:
    """Progress for a list: one stderr line per concept skipped, failed or finished (prefixed
    with the process under a launcher), plus rank 0's bars."""
    prefix = f"[{rank}/{world}] " if world > 1 else ""

    def handle(ev: Any) -> None:
        if on_event is not None:
            on_event(ev)
        if ev.kind == "skip":
            err.print(
                f"{prefix}{ev.concept}: stored earlier with the same settings and E_k — skipped"
            )
        elif ev.kind == "failed":
            exc = ev.info  # the engine's error: its message and the CLI's next step
            step = next_step(exc) if isinstance(exc, SepmeError) else None
            err.print(f"{prefix}{ev.concept}: failed — {exc}" + (f" — {step}" if step else ""))
        elif ev.kind == "done" and world > 1:
            o = ev.info
            err.print(f"{prefix}{ev.concept}: {o.verdict or 'stored'} ({o.wall_s:.1f}s)")

    return handle


def _evidence(o: Any) -> str:
    """What the verdict rests on: ρ (residual correlation) and, on the toy base, the judged
    rate of the bare prompt against the blank prompt's on the same seeds."""
    parts = []
    if o.correlation is not None:
        parts.append(f"ρ {o.correlation:+.2f}")
    if o.judged_rate is not None and o.chance_rate is not None:
        parts.append(f"{100 * o.judged_rate:.0f}% (chance {100 * o.chance_rate:.0f}%)")
    return ", ".join(parts) or "–"


@app.command("list")
def list_(base: BaseOpt = None, json_out: JsonOpt = False) -> None:
    """List the base's increments.

    Examples:

        $ sepme list
        $ sepme list --base sd15 --json
    """
    from sepme_engine.bases import get_base
    from sepme_engine.increments import list_increments

    store = open_store()
    info = get_base(store, base)
    incs = list_increments(store, info.name)
    if json_out:
        print_json([i.to_dict() for i in incs])
        return
    rows = [
        (
            i.concept,
            i.prompt,
            "yes" if i.active else "",
            i.method,
            f"{i.norm:.4g}",
            i.iterations,
            i.stop_reason,
            i.created,
        )
        for i in incs
    ]
    out.print(
        table(
            f"increments on {info.name}",
            ["concept", "prompt", "active", "method", "‖ΔW‖", "iterations", "stop", "created"],
            rows,
            drop=["created", "prompt", "method", "stop", "iterations"],
        )
    )
    if not incs:
        err.print(f'none yet: `sepme erase "CONCEPT" --base {info.name}`')


app.command("ls", hidden=True, help="Alias of `list`.")(list_)


@app.command("show")
def show(
    concept: ConceptArg,
    base: BaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one increment with its settings and preserved prompts.

    Examples:

        $ sepme show van-gogh
        $ sepme show "Van Gogh" --base sd15 --json
    """
    from sepme_engine.bases import get_base
    from sepme_engine.increments import get_increment

    store = open_store()
    inc = get_increment(store, get_base(store, base).name, concept)
    if json_out:
        print_json(inc.to_dict())
        return
    rows: list[tuple[str, Any]] = [
        ("concept", inc.concept),
        ("prompt", inc.prompt),
        ("base", f"{inc.base} ({inc.base_digest[:19]})"),
        ("method", inc.method),
        ("active", inc.active),
        ("‖ΔW‖", f"{inc.norm:.6g}"),
        ("m_k", inc.m_k),
        ("iterations", inc.iterations),
        ("stop reason", inc.stop_reason),
        ("created", inc.created),
        ("blob", inc.blob.digest),
    ]
    rows += [(f"setting {k}", v) for k, v in sorted(inc.settings.items())]
    rows += [(f"stat {k}", v) for k, v in sorted(inc.stats.items())]
    rows += [("preserves", repr(p)) for p in inc.preserve_prompts]
    out.print(table(None, ["field", "value"], rows))


@app.command("rm")
def rm(
    concept: ConceptArg,
    base: BaseOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
) -> None:
    """Remove an increment (and drop it from the active composition).

    Examples:

        $ sepme rm van-gogh --dry-run
        $ sepme rm van-gogh --yes
    """
    from sepme_engine.bases import get_base
    from sepme_engine.increments import remove_increment

    store = open_store()
    name = get_base(store, base).name
    remove_increment(store, name, concept, dry_run=True)
    if dry_run:
        out.print(f"would remove increment {concept} from {name}")
        return
    confirm(f"Remove increment {concept} from {name}?", yes)
    remove_increment(store, name, concept)
    out.print(f"removed increment {concept} from {name}")
