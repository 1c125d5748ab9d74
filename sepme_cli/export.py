"""`sepme export`: a merged checkpoint, a diffusers folder or a LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sepme_cli._complete import complete_concept, complete_format, complete_variant
from sepme_cli._params import BaseOpt, ForceOpt, JsonOpt, in_range, open_store
from sepme_cli._render import err, human_size, out, print_json, step_progress

app = typer.Typer()


@app.command("export")
def export(
    output: Annotated[
        Path, typer.Argument(help="Output .safetensors file (ldm, lora) or folder (diffusers).")
    ],
    base: BaseOpt = None,
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant", help="Export this saved variant.", autocompletion=complete_variant
        ),
    ] = None,
    erase: Annotated[
        list[str] | None,
        typer.Option(
            "--erase",
            help="Export these increments (comma-separated).",
            autocompletion=complete_concept,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="ldm (the default for .safetensors), diffusers (the default for a folder) "
            "or lora; .ckpt/.pt are refused (sepme writes no pickles).",
            autocompletion=complete_format,
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="fp16, bf16 or fp32.")] = "fp16",
    rank: Annotated[
        int | None,
        typer.Option(
            help="LoRA: truncate each layer to this rank by SVD.",
            callback=in_range("rank", 1, 100_000),
        ),
    ] = None,
    sha256: Annotated[
        bool | None,
        typer.Option(
            "--hash/--no-hash",
            help="Write modelspec.hash_sha256 (SHA-256 of the tensor data). "
            "Default: on for LoRAs, off for single files (hashing gigabytes costs as much as "
            "writing them).",
            show_default=False,
        ),
    ] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export the base with its active composition (or a variant / --erase list).

    Examples:

        $ sepme export erased.safetensors                   # A1111/ComfyUI single file, fp16
        $ sepme export erased-folder --format diffusers
        $ sepme export painters-lora.safetensors --format lora --variant painters --rank 8
    """
    from sepme_engine.export.run import export as run

    with step_progress(f"exporting {output.name}") as progress:
        report = run(
            open_store(),
            output,
            base=base,
            variant=variant,
            erase=erase,
            fmt=fmt,
            dtype=dtype,
            rank=rank,
            force=force,
            progress=progress,
            sha256=sha256,
        )
    if json_out:
        print_json(report.to_dict())
        return
    out.print(str(report.path))
    line = f"{report.format}, {report.dtype}, {report.n_tensors} tensors, {human_size(report.bytes_written)} in {report.wall_s:.1f}s, peak RSS {human_size(report.peak_rss_bytes)}"
    if report.format == "lora":
        line += f", rank {report.rank}, relative error {report.relative_error:.2e}"
    err.print(line)
