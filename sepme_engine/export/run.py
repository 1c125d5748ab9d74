"""`sepme export`: a composition of the store as a file other programs load.

Formats: `ldm` (one A1111/ComfyUI .safetensors; the default for a `.safetensors` OUT),
`diffusers` (a pipeline folder; the default for any other OUT) and `lora` (the active
increments as a kohya LoRA). The destination is checked before the model is loaded, and every
writer leaves the output complete or absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sepme_engine import __version__
from sepme_engine.bases import get_base, load_base, stored_float_dtype
from sepme_engine.compose import composition_deltas, selection
from sepme_engine.errors import AlreadyExists, InvalidInput
from sepme_engine.increments import get_increment, load_increment
from sepme_engine.models.arch import DTYPES
from sepme_engine.models.configs import PROFILE_METADATA_KEY
from sepme_engine.store import SCHEMA_VERSION, Store

FORMATS = ("ldm", "diffusers", "lora")


# Suffixes of pickle checkpoints: sepme never writes one (loading a pickle can run code).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def guess_format(out: Path, fmt: str | None) -> str:
    """The format from --format, else from OUT's suffix; refuse pickles and contradictions."""
    suffix = out.suffix.lower()
    if fmt is not None and fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    if suffix in PICKLE_SUFFIXES:
        raise InvalidInput(
            f"sepme writes no pickles: {out.name} would be a {suffix} pickle, which can run code "
            "when loaded",
            hint=f"export to {out.with_suffix('.safetensors').name} (A1111 and ComfyUI read it)",
        )
    if fmt == "diffusers" and suffix == ".safetensors":
        raise InvalidInput(
            f"the diffusers format writes a folder, but {out.name} names a .safetensors file",
            hint=f"give a folder ({out.with_suffix('').name})",
            kind="diffusers-file",
            path=str(out.with_suffix("")),
        )
    if fmt is not None:
        return fmt
    return "ldm" if suffix == ".safetensors" else "diffusers"


def export(
    store: Store,
    out: Path,
    *,
    base: str | None = None,
    variant: str | None = None,
    erase: Sequence[str] | None = None,
    fmt: str | None = None,
    dtype: str = "fp16",
    rank: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    sha256: bool | None = None,
) -> Any:
    """Export the base with a composition (default: its active set); returns an ExportReport.

    `sha256`: write `modelspec.hash_sha256` (the SHA-256 of the tensor data). None = the format's
    default: on for a LoRA (megabytes: free), off for a single file, where hashing gigabytes costs
    as much as writing them (SDXL: 3.5 s of a core for 6.94 GB, benchmarks/results/export.md);
    a diffusers folder has no place for it (True is refused).
    """
    out = Path(out)
    fmt = guess_format(out, fmt)
    if sha256 and fmt == "diffusers":
        raise InvalidInput(
            "a diffusers folder carries no modelspec hash",
            hint="hash an ldm single file or a LoRA instead",
            kind="hash-not-file",
        )
    if sha256 is None:
        sha256 = fmt == "lora"
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}", hint="use fp16, bf16 or fp32")
    if rank is not None and fmt != "lora":
        raise InvalidInput(
            f"a rank applies to LoRA exports only, not to {fmt}",
            hint="drop the rank, or export a LoRA",
            kind="rank-not-lora",
        )
    if rank is not None and rank < 1:
        raise InvalidInput(
            f"rank must be at least 1, got {rank}", hint="use a rank of 4 or more", kind="rank"
        )
    if fmt in ("ldm", "lora") and out.suffix.lower() != ".safetensors":
        raise InvalidInput(
            f"{fmt} exports are single .safetensors files; {out} is not",
            hint="end the output path with .safetensors",
        )
    if (out.exists() or out.is_symlink()) and not force:
        raise AlreadyExists(
            f"{out} already exists", hint="choose another output path", kind="output", path=str(out)
        )
    if not out.parent.is_dir():
        raise InvalidInput(f"the folder {out.parent} does not exist", hint="create it first")
    info = get_base(store, base)
    names = selection(store, info, variant=variant, erase=erase)
    increments = [get_increment(store, info.name, n) for n in names]
    metadata = {
        "sepme.schema_version": str(SCHEMA_VERSION),
        "sepme.version": __version__,
        "sepme.base": info.name,
        "sepme.base_digest": info.base_digest,
        PROFILE_METADATA_KEY: info.profile,
        "sepme.increments": json.dumps(
            [
                {
                    "concept": i.concept,
                    "prompt": i.prompt,
                    "method": i.method,
                    "digest": i.blob.digest,
                    "settings": i.settings,
                    "preserve_prompts": list(i.preserve_prompts),
                }
                for i in increments
            ],
            sort_keys=True,
        ),
    }
    title = f"{info.name}" + (f" without {', '.join(names)}" if names else "")
    if fmt == "lora":
        from sepme_engine.export.lora import export_lora

        if not names:
            raise InvalidInput(
                "nothing to export as a LoRA: no increment is selected",
                hint="erase a concept first, or select one",
                kind="lora-nothing-selected",
            )
        incs = {i.concept: load_increment(store, i, info) for i in increments}
        return export_lora(
            incs,
            out,
            arch=info.arch,
            rank=rank,
            dtype=dtype,
            title=title,
            metadata=metadata,
            force=force,
            progress=progress,
            sha256=sha256,
        )
    # an fp16/bf16 base is held in its own dtype: the same values as float32 (the composition
    # upcasts each to_k/to_v weight that has a delta), half the memory (SDXL: 7 GB, not 14)
    from sepme_engine.export.report import parse_dtype
    from sepme_engine.models.load import quiet_loading

    held = stored_float_dtype(store, info)
    with quiet_loading():  # no "fp16 cannot run on cpu" warning: export only reads the weights
        pipe = load_base(  # verify: never export a corrupt base blob
            store, info.name, verify=True, dtype=parse_dtype(held)[1] if held else None
        )
    deltas = composition_deltas(store, info, names)
    if fmt == "ldm":
        from sepme_engine.export.single_file import export_single_file

        return export_single_file(
            pipe,
            deltas,
            out,
            arch=info.arch,
            dtype=dtype,
            metadata=metadata,
            title=title,
            erased=list(names),
            force=force,
            progress=progress,
            sha256=sha256,
        )
    from sepme_engine.export.diffusers_dir import export_diffusers

    return export_diffusers(
        pipe,
        deltas,
        out,
        dtype=dtype,
        metadata=metadata,
        force=force,
        progress=progress,
        profile=info.profile,
    )
