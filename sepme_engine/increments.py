"""Increments in the store: one manifest per (base, concept) over a safetensors blob.

Listing and showing are torch-free; saving and loading tensors import torch lazily.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sepme_engine import __version__
from sepme_engine.bases import BaseInfo, now_iso
from sepme_engine.errors import AlreadyExists, BaseMismatch, Conflict, InvalidInput, NotFound
from sepme_engine.names import close_matches, is_path_like, lookup_names, slugify
from sepme_engine.store import BlobRef, Store, faults, validate_name


@dataclass(frozen=True)
class IncrementInfo:
    base: str
    concept: str
    prompt: str
    method: str
    base_digest: str
    blob: BlobRef
    active: bool
    norm: float  # ‖ΔW‖ Frobenius over all layers
    m_k: int | None
    iterations: int
    stop_reason: str
    created: str
    preserve_prompts: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "concept": self.concept,
            "prompt": self.prompt,
            "method": self.method,
            "base_digest": self.base_digest,
            "blob": self.blob.to_dict(),
            "active": self.active,
            "norm": self.norm,
            "m_k": self.m_k,
            "iterations": self.iterations,
            "stop_reason": self.stop_reason,
            "created": self.created,
            "preserve_prompts": list(self.preserve_prompts),
            "settings": self.settings,
            "stats": self.stats,
        }


def concept_name(text: str) -> str:
    """A store name for a concept: 'Van Gogh' -> 'van-gogh'."""
    slug = slugify(text)
    if not slug:
        raise InvalidInput(
            f"cannot make a name from {text!r}",
            hint="give the concept a plain name and the text as its prompt",
            kind="concept-name",
        )
    return validate_name(slug, "concept name")


def _key(base: str, concept: str) -> str:
    return f"{base}/{concept}"


def active_set(store: Store, base: str) -> list[str]:
    if not store.has_manifest("compositions", base):
        return []
    return sorted(store.read_manifest("compositions", base).get("active", []))


@dataclass(frozen=True)
class StoreView:
    """What a long command (erase) read from the store before it started working: the base's
    digest and its increments (concept -> blob digest), minus the ones the command itself
    replaces. `check` re-reads them under the store lock at save time: if another process
    changed them meanwhile (a concurrent erase added one, `base rm` removed the base), the
    E_k computed from the old view is stale, and the result must not be stored."""

    base: str
    base_digest: str
    increments: tuple[tuple[str, str], ...]
    exclude: frozenset[str]

    def check(self, store: Store) -> None:
        now = store_view(store, self.base, exclude=self.exclude)
        if now.base_digest != self.base_digest:
            raise Conflict(
                f"base {self.base!r} was removed or replaced while this command ran; "
                "its result was discarded",
                hint="add the base again if you need it, then rerun the command",
            )
        if now.increments != self.increments:
            before, after = dict(self.increments), dict(now.increments)
            changed = sorted(
                set(before) ^ set(after) | {c for c in before if before[c] != after.get(c)}
            )
            raise Conflict(
                f"another sepme process changed the increments of base {self.base!r} "
                f"({', '.join(changed)}) while this erase trained, so its preserve set E_k is "
                "out of date; its result was discarded",
                hint="run the erase again (erase concepts one at a time, or several in one call)",
            )


def store_view(
    store: Store, base: str, *, exclude: frozenset[str] | set[str] = frozenset()
) -> StoreView:
    """The current StoreView of `base` (see StoreView)."""
    from sepme_engine.bases import get_base

    try:
        digest = get_base(store, base).base_digest
    except NotFound:
        digest = ""
    incs = tuple(
        sorted(
            (k.split("/", 1)[1], str(store.read_manifest("increments", k)["blob"]["digest"]))
            for k in store.list_manifests("increments", base)
            if k.split("/", 1)[1] not in exclude
        )
    )
    return StoreView(base, digest, incs, frozenset(exclude))


def _info(data: dict[str, Any], active: set[str]) -> IncrementInfo:
    return IncrementInfo(
        base=data["base"],
        concept=data["concept"],
        prompt=data["prompt"],
        method=data["method"],
        base_digest=data["base_digest"],
        blob=BlobRef.from_dict(data["blob"]),
        active=data["concept"] in active,
        norm=float(data.get("norm", 0.0)),
        m_k=data.get("m_k"),
        iterations=int(data.get("iterations", 0)),
        stop_reason=str(data.get("stop_reason", "")),
        created=data["created"],
        preserve_prompts=tuple(data.get("preserve_prompts", [])),
        settings=dict(data.get("settings", {})),
        stats=dict(data.get("stats", {})),
    )


def list_increments(store: Store, base: str) -> list[IncrementInfo]:
    active = set(active_set(store, base))
    return [
        _info(store.read_manifest("increments", k), active)
        for k in store.list_manifests("increments", base)
    ]


def resolve_concept(store: Store, base: str, text: str) -> str:
    """The stored name of the concept `text` names on `base`: the name itself, else its slug
    ('Van Gogh' -> 'van-gogh', as `erase` stores it). NotFound (with "did you mean") if none."""
    if is_path_like(text):
        validate_name(text, "concept name")  # refused: a lookup never builds a path from it
    for cand in lookup_names(text):
        if store.has_manifest("increments", _key(base, cand)):
            return cand
    slug = slugify(text)
    names = [k.split("/", 1)[1] for k in store.list_manifests("increments", base)]
    raise NotFound(
        f"no increment {text!r} on base {base!r}",
        kind="increment",
        name=text,
        base=base,
        candidates=close_matches(slug or text, names),
    )


def get_increment(store: Store, base: str, concept: str) -> IncrementInfo:
    key = _key(base, resolve_concept(store, base, concept))
    return _info(store.read_manifest("increments", key), set(active_set(store, base)))


def has_increment(store: Store, base: str, concept: str) -> bool:
    return store.has_manifest("increments", _key(base, concept))


def save_increment(
    store: Store,
    base: BaseInfo,
    concept: str,
    increment: Any,
    *,
    prompt: str,
    method: str,
    m_k: int | None,
    iterations: int,
    stop_reason: str,
    preserve_prompts: list[str],
    settings: dict[str, Any],
    stats: dict[str, Any],
    force: bool = False,
    activate: bool = True,
    expect: StoreView | None = None,
) -> IncrementInfo:
    """Write the increment's tensors as a blob (via an .incomplete file) and its manifest.

    With `expect` (what the caller read before training), the store is checked under the lock
    first and a Conflict raised, nothing written, if the base or its increments changed."""
    import torch

    key = _key(base.name, concept)
    if store.has_manifest("increments", key) and not force:
        raise AlreadyExists(
            f"increment {concept!r} exists on base {base.name!r}",
            kind="increment",
            name=concept,
            base=base.name,
        )
    meta = {
        "sepme.version": __version__,
        "sepme.base": base.name,
        "sepme.base_digest": base.base_digest,
        "sepme.concept": concept,
        "sepme.prompt": prompt,
        "sepme.method": method,
        "sepme.settings": json.dumps(settings, sort_keys=True),
        "sepme.preserve_prompts": json.dumps(preserve_prompts),
    }
    increment = increment.with_meta(**meta)
    norm = float(
        torch.sqrt(
            sum((increment.delta(n).double() ** 2).sum() for n in increment.layer_names())
        ).item()
    )
    with store.locked():
        if expect is not None:
            expect.check(store)
        if store.has_manifest("increments", key) and not force:
            raise AlreadyExists(
                f"increment {concept!r} was created on base {base.name!r} while this one trained",
                kind="increment",
                name=concept,
                base=base.name,
            )
        tmp = store.incomplete_path("increment")
        try:
            increment.save(tmp)
            ref = store.put_blob_file(tmp, move=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
        faults.point("increment.after-blob")
        store.write_manifest(
            "increments",
            key,
            {
                "kind": "increment",
                "base": base.name,
                "base_digest": base.base_digest,
                "concept": concept,
                "prompt": prompt,
                "method": method,
                "blob": ref.to_dict(),
                "norm": norm,
                "m_k": m_k,
                "iterations": iterations,
                "stop_reason": stop_reason,
                "preserve_prompts": preserve_prompts,
                "settings": settings,
                "stats": stats,
                "created": now_iso(),
                "sepme_version": __version__,
            },
        )
        faults.point("increment.after-manifest")
        if activate:
            set_active(store, base.name, sorted(set(active_set(store, base.name)) | {concept}))
    return get_increment(store, base.name, concept)


def set_active(store: Store, base: str, names: list[str]) -> None:
    store.write_manifest(
        "compositions", base, {"kind": "composition", "base": base, "active": sorted(set(names))}
    )


def remove_increment(
    store: Store, base: str, concept: str, *, dry_run: bool = False
) -> IncrementInfo:
    info = get_increment(store, base, concept)
    concept = info.concept
    if not dry_run:
        with store.locked():
            set_active(store, base, [c for c in active_set(store, base) if c != concept])
            store.delete_manifest("increments", _key(base, concept))
    return info


def load_increment(store: Store, info: IncrementInfo, base: BaseInfo | None = None) -> Any:
    """Load the tensors; refuse an increment bound to another base or to other layers."""
    from sepme_engine.delta.increment import Increment

    if base is not None:
        check_binding(info, base)
    inc = Increment.load(store.check_blob(info.blob, always=True))  # small: hash every read
    if base is not None:
        layers = dict(base.cross_attn_layers)
        for name, shape in inc.shapes().items():
            if name not in layers or tuple(layers[name]) != tuple(shape):
                raise BaseMismatch(
                    f"increment {info.concept!r} has layer {name} {shape} that base {base.name!r} "
                    f"does not have ({layers.get(name)})",
                    hint="the increment was made for another model; erase the concept again on this base",
                )
    return inc


def check_binding(info: IncrementInfo, base: BaseInfo) -> None:
    if info.base_digest != base.base_digest:
        raise BaseMismatch(
            f"increment {info.concept!r} was made for base digest {info.base_digest[:19]}, "
            f"but base {base.name!r} is {base.base_digest[:19]}",
            hint="the base changed since; erase the concept again",
            kind="increment",
            name=info.concept,
            base=base.name,
        )
