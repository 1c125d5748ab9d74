"""Bases: add, list, show, remove, choose the default, and load them for the model code.

Listing and showing never import torch: what they print comes from manifests (and, for the
built-in toy base, from the shipped folder's JSON configs and safetensors headers).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sepme_engine import __version__
from sepme_engine.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    PickleRefused,
)
from sepme_engine.models.detect import KNOWN_BASES, PICKLE_SUFFIXES, hub_snapshot, inspect_source
from sepme_engine.names import is_path_like, lookup_names
from sepme_engine.store import BlobRef, Store, faults, validate_name
from sepme_engine.store.core import hash_file

TOY = "toy"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class BaseInfo:
    name: str
    source_type: str  # builtin | diffusers | single_file | hub
    origin: str  # where it came from (path or hub id)
    linked: bool  # registered by reference instead of copied
    base_digest: str
    size: int
    arch: str  # sd1 | sd2 | sd2-v | sdxl
    profile: str  # settings profile: "toy" for the toy base, else the arch
    prediction_type: str
    text_width: int
    tokenizer_max_length: int
    cross_attn_layers: tuple[tuple[str, tuple[int, int]], ...]
    created: str
    is_default: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def builtin(self) -> bool:
        return self.source_type == "builtin"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_type": self.source_type,
            "origin": self.origin,
            "linked": self.linked,
            "base_digest": self.base_digest,
            "size": self.size,
            "arch": self.arch,
            "profile": self.profile,
            "prediction_type": self.prediction_type,
            "text_width": self.text_width,
            "tokenizer_max_length": self.tokenizer_max_length,
            "cross_attn_layers": [[n, list(s)] for n, s in self.cross_attn_layers],
            "created": self.created,
            "is_default": self.is_default,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class RemovalPlan:
    base: str
    increments: tuple[str, ...]
    variants: tuple[str, ...]
    dry_run: bool


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def tree_digest(files: dict[str, BlobRef]) -> str:
    listing = "\n".join(f"{rel}\t{ref.digest}" for rel, ref in sorted(files.items()))
    return "sha256:" + hashlib.sha256(listing.encode("utf-8")).hexdigest()


# -- reading a diffusers folder without torch ------------------------------------------------
def diffusers_files(folder: Path, allow_pickle: bool = False) -> list[str]:
    """The files of a pipeline folder sepme keeps (relative paths), safetensors preferred."""
    folder = Path(folder)
    out = ["model_index.json"]
    comps = list(COMPONENTS)
    if (folder / "text_encoder_2").is_dir() or (folder / "tokenizer_2").is_dir():
        comps += ["text_encoder_2", "tokenizer_2"]  # SDXL
    for comp in comps:
        cdir = folder / comp
        if not cdir.is_dir():
            raise InvalidInput(
                f"{folder} is not a Stable Diffusion pipeline folder: {comp}/ is missing",
                hint="pass a diffusers StableDiffusionPipeline folder or a single .safetensors file",
            )
        files = sorted(p for p in cdir.rglob("*") if p.is_file() and not p.name.startswith("."))
        has_st = any(p.suffix == ".safetensors" for p in files)
        for p in files:
            if p.suffix in PICKLE_SUFFIXES and p.suffix != ".safetensors":
                if has_st:
                    continue
                if not allow_pickle:
                    raise PickleRefused(
                        f"{p} is a pickle file, which can run arbitrary code when loaded",
                        hint="convert it to .safetensors",
                        kind="pickle",
                    )
            if ".fp16." in p.name and any(q.name == p.name.replace(".fp16.", ".") for q in files):
                continue
            out.append(str(p.relative_to(folder)))
    return out


# -- the built-in toy base -------------------------------------------------------------------
_TOY_CACHE: dict[str, BaseInfo] = {}


def toy_folder() -> Path:
    return Path(__file__).parent / "toy" / "weights"


def toy_available() -> bool:
    return (toy_folder() / "model_index.json").is_file()


def _toy_info(default: str) -> BaseInfo:
    folder = toy_folder()
    key = str(folder)
    if key not in _TOY_CACHE:
        files = {rel: hash_file(folder / rel) for rel in diffusers_files(folder)}
        src = inspect_source(folder)
        mtime = os.path.getmtime(folder / "model_index.json")
        _TOY_CACHE[key] = BaseInfo(
            name=TOY,
            source_type="builtin",
            origin=str(folder),
            linked=True,
            base_digest=tree_digest(files),
            size=sum(r.size for r in files.values()),
            arch=src.arch,
            profile=TOY,
            prediction_type=src.prediction_type,
            text_width=src.text_width,
            tokenizer_max_length=src.tokenizer_max_length,
            cross_attn_layers=src.cross_attn_layers,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime)),
            notes=("built in: ships with sepme, trained on the toy world",),
        )
    info = _TOY_CACHE[key]
    return _with_default(info, default)


def _with_default(info: BaseInfo, default: str) -> BaseInfo:
    from dataclasses import replace

    return replace(info, is_default=(info.name == default))


# -- manifests <-> BaseInfo ------------------------------------------------------------------
def _info_from_manifest(data: dict[str, Any], default: str) -> BaseInfo:
    return BaseInfo(
        name=data["name"],
        source_type=data["source_type"],
        origin=data["origin"],
        linked=bool(data.get("link")),
        base_digest=data["base_digest"],
        size=int(data["size"]),
        arch=data["arch"],
        profile=data.get("profile", data["arch"]),
        prediction_type=data["prediction_type"],
        text_width=int(data["text_width"]),
        tokenizer_max_length=int(data["tokenizer_max_length"]),
        cross_attn_layers=tuple((n, (int(s[0]), int(s[1]))) for n, s in data["cross_attn_layers"]),
        created=data["created"],
        is_default=data["name"] == default,
        notes=tuple(data.get("notes", [])),
    )


def default_base_name(store: Store) -> str:
    """`sepme base use`'s choice, else `default_base` in config.toml, else the toy base."""
    chosen = store.read_state().get("default_base")
    if not chosen:
        from sepme_engine.config import load_config

        cfg = load_config(store.root)
        chosen = next((s.value for s in cfg.settings if s.key == "default_base"), None)
    return str(chosen or TOY)


def list_bases(store: Store) -> list[BaseInfo]:
    default = default_base_name(store)
    out: list[BaseInfo] = []
    if toy_available():
        out.append(_toy_info(default))
    for key in store.list_manifests("bases"):
        out.append(_info_from_manifest(store.read_manifest("bases", key), default))
    return out


def not_found_base(name: str, have: list[str] | None = None) -> NotFound:
    from sepme_engine.names import close_matches

    return NotFound(
        f"no base {name!r} in the store",
        kind="base",
        name=name,
        candidates=close_matches(name.strip().lower(), have or []),
    )


def get_base(store: Store, name: str | None = None) -> BaseInfo:
    default = default_base_name(store)
    name = name or default
    if name.strip().lower() == TOY and toy_available():
        return _toy_info(default)
    if is_path_like(name):
        validate_name(name, "base name")  # refused: a lookup never builds a path from it
    # names are stored lowercase: `--base SD15` is sd15
    found = [c for c in lookup_names(name) if store.has_manifest("bases", c)]
    if found:
        name = found[0]
    else:
        have = ([TOY] if toy_available() else []) + list(store.list_manifests("bases"))
        raise not_found_base(name, have)
    return _info_from_manifest(store.read_manifest("bases", name), default)


def use_base(store: Store, name: str) -> BaseInfo:
    info = get_base(store, name)
    store.write_state(default_base=name)
    from dataclasses import replace

    return replace(info, is_default=True)


# -- adding ----------------------------------------------------------------------------------
def add_base(
    store: Store,
    name: str,
    source: str | None = None,
    *,
    link: bool = False,
    allow_pickle: bool = False,
    prediction_type: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BaseInfo:
    """Register a base: a diffusers folder, an A1111/ComfyUI single file, or a hub id."""
    validate_name(name, "base name")
    if name == TOY:
        raise AlreadyExists("'toy' is the built-in base", hint="choose another name")
    if source is None:
        if name not in KNOWN_BASES:
            raise InvalidInput(
                f"no SOURCE given and {name!r} is not a well-known base "
                f"({', '.join(sorted(KNOWN_BASES))})",
                hint="give the path of the checkpoint",
                kind="base-source",
                name=name,
            )
        source = KNOWN_BASES[name]
    if store.has_manifest("bases", name) and not force:
        raise AlreadyExists(
            f"a base named {name!r} exists already",
            kind="base",
            name=name,
        )
    src = inspect_source(source, prediction_type=prediction_type, allow_pickle=allow_pickle)
    if src.kind == "hub":
        # the configs were enough to identify it; now the weights (HF cache, or downloaded)
        assert src.hub_id is not None
        path: Path | None = hub_snapshot(src.hub_id, configs_only=False, allow_pickle=allow_pickle)
    else:
        path = Path(src.path) if src.path else None
    files: dict[str, BlobRef] = {}
    link_info: dict[str, Any] | None = None
    store.ensure()
    if src.kind == "single_file":
        assert path is not None
        suffix = path.suffix.lower()
        fname = "model.safetensors" if suffix == ".safetensors" else "model" + suffix
        if link:
            ref = hash_file(path)
            link_info = {
                "path": str(path.resolve()),
                "size": ref.size,
                "mtime": path.stat().st_mtime,
            }
            base_digest, size = ref.digest, ref.size
            rel_files = {fname: ref}
        else:
            done = [0]
            total = path.stat().st_size

            def tick(n: int) -> None:
                done[0] += n
                if progress:
                    progress(done[0], total)

            files[fname] = store.put_blob_file(path, progress=tick)
            base_digest, size = files[fname].digest, files[fname].size
            rel_files = files
    else:
        assert path is not None
        rels = diffusers_files(path, allow_pickle=allow_pickle)
        total = sum((path / r).stat().st_size for r in rels)
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        if link or src.kind == "hub":
            rel_files = {r: hash_file(path / r, progress=tick) for r in rels}
            link_info = {"path": str(path.resolve()), "size": total}
        else:
            files = {r: store.put_blob_file(path / r, progress=tick) for r in rels}
            rel_files = files
        base_digest = tree_digest(rel_files)
        size = sum(r.size for r in rel_files.values())
    manifest: dict[str, Any] = {
        "kind": "base",
        "name": name,
        "source_type": src.kind,
        "origin": str(source),
        "base_digest": base_digest,
        "size": size,
        "format": "single_file" if src.kind == "single_file" else "diffusers",
        "file_format": src.file_format,
        "arch": src.arch,
        # an export of a base records its profile (e.g. the toy's): a re-import keeps it
        "profile": src.profile or src.arch,
        "prediction_type": src.prediction_type,
        "text_width": src.text_width,
        "tokenizer_max_length": src.tokenizer_max_length,
        "cross_attn_layers": [[n, list(s)] for n, s in src.cross_attn_layers],
        "created": now_iso(),
        "sepme_version": __version__,
        "notes": list(src.notes),
    }
    if link_info is not None:
        manifest["link"] = link_info
        manifest["link_files"] = {r: ref.digest for r, ref in rel_files.items()}
    else:
        manifest["files"] = {r: ref.to_dict() for r, ref in files.items()}
    if allow_pickle:
        manifest["allow_pickle"] = True  # the user accepted its pickles: loading needs it too
    faults.point("base.after-blobs")
    with store.locked():  # a concurrent `base add` of the same name may have finished first
        if store.has_manifest("bases", name) and not force:
            raise AlreadyExists(
                f"a base named {name!r} was added by another sepme process meanwhile",
                kind="base",
                name=name,
            )
        missing = [r for r, ref in files.items() if not store.has_blob(ref)]
        if missing:  # a concurrent `store prune` collected them before the manifest existed
            raise Conflict(
                f"files of base {name!r} were pruned while it was being added ({missing[0]})",
                hint="add the base again",
                kind="base-add",
                name=name,
            )
        store.write_manifest("bases", name, manifest)
    return get_base(store, name)


# -- removing ---------------------------------------------------------------------------------
def remove_base(store: Store, name: str, *, dry_run: bool = False) -> RemovalPlan:
    if name == TOY:
        raise InvalidInput(
            "the built-in toy base cannot be removed",
            hint="remove its increments instead",
            kind="toy-base",
        )
    get_base(store, name)
    with store.locked():  # plan and removal under one lock: nothing added meanwhile survives
        incs = tuple(store.list_manifests("increments", name))
        variants = tuple(store.list_manifests("variants", name))
        plan = RemovalPlan(
            name,
            tuple(k.split("/", 1)[1] for k in incs),
            tuple(v.split("/", 1)[1] for v in variants),
            dry_run,
        )
        if dry_run:
            return plan
        for key in incs:
            store.delete_manifest("increments", key)
            faults.point("base-rm.mid")
        for key in variants:
            store.delete_manifest("variants", key)
        if store.has_manifest("compositions", name):
            store.delete_manifest("compositions", name)
        store.delete_manifest("bases", name)
        if default_base_name(store) == name:
            store.write_state(default_base=TOY)
    return plan


# -- loading (torch) --------------------------------------------------------------------------
def base_location(store: Store, info: BaseInfo, *, verify: bool = False) -> tuple[str, Path]:
    """(format, path) the model loader reads: a folder for diffusers, a file for single files.

    A stored base's blobs are re-hashed when their size or mtime changed since the last check,
    and always with `verify` (export)."""
    if info.builtin:
        return "diffusers", Path(info.origin)
    data = store.read_manifest("bases", info.name)
    fmt = data.get("format", "diffusers")
    if data.get("link"):
        path = Path(data["link"]["path"])
        if not path.exists():
            raise NotFound(
                f"the linked source of base {info.name!r} is gone: {path}",
                hint="put it back, or remove the base and add it again",
                kind="linked-source",
                name=info.name,
                path=str(path),
            )
        return fmt, path
    files = {r: BlobRef.from_dict(v) for r, v in data["files"].items()}
    for ref in files.values():
        store.check_blob(ref, always=verify)
    view = store.view(info.base_digest.split(":", 1)[1], files)
    if fmt == "single_file":
        return fmt, view / next(iter(files))
    return fmt, view


_FLOAT_ST_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def stored_float_dtype(store: Store, info: BaseInfo) -> str | None:
    """ "fp16" or "bf16" when every floating tensor of the base's weight files is stored in that
    dtype (all of them .safetensors), else None. Loading such a base in that dtype holds exactly
    the stored values (fp16/bf16 -> fp32 is exact), in half the memory of float32."""
    from sepme_engine.safetensors_header import read_header

    fmt, path = base_location(store, info)
    if fmt == "single_file":
        files = [path]
    else:
        try:
            rels = diffusers_files(path, allow_pickle=True)
        except InvalidInput:
            return None
        files = [
            path / r for r in rels if Path(r).suffix.lower() in (*PICKLE_SUFFIXES, ".safetensors")
        ]
    seen: set[str] = set()
    for f in files:
        if f.suffix.lower() != ".safetensors":
            return None
        tensors, _ = read_header(f)
        seen |= {t["dtype"] for t in tensors.values() if t["dtype"] in _FLOAT_ST_DTYPES}
    return {frozenset({"F16"}): "fp16", frozenset({"BF16"}): "bf16"}.get(frozenset(seen))


def load_base(
    store: Store,
    name: str | None = None,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    verify: bool = False,
) -> Any:
    """Load a base as a diffusers StableDiffusionPipeline (frozen, eval mode); `verify`
    re-hashes every blob of a stored base first (export does)."""
    from sepme_engine.models.load import load_pipeline

    info = get_base(store, name)
    fmt, path = base_location(store, info, verify=verify)
    kwargs: dict[str, Any] = {"device": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    pickled = False
    if not info.builtin:
        # the user accepted the pickle when adding it (--allow-pickle); it loads weights_only
        data = store.read_manifest("bases", info.name)
        pickled = data.get("file_format") == "pickle" or bool(data.get("allow_pickle"))
    return load_pipeline(
        path,
        "single_file" if fmt == "single_file" else "diffusers",
        allow_pickle=pickled,
        arch=info.arch,
        prediction_type=info.prediction_type,
        **kwargs,
    )
