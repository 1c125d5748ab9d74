"""Compositions: which increments are active on a base, named variants, and the canonical sum.

The weights of a composition follow the one rule of `sepme_engine.delta.composition`:
`(W_base.float() + D).to(dtype)` with `D = Σ_i ΔW_i` summed in float32 in sorted concept-name
order starting from zeros — computed from scratch from the active set every time, so restoring
is exact: erase {a, b} then restore b gives bit-for-bit the weights of erase {a}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sepme_engine.bases import BaseInfo, get_base, now_iso
from sepme_engine.errors import AlreadyExists, InvalidInput, NotFound
from sepme_engine.increments import (
    active_set,
    concept_name,
    get_increment,
    load_increment,
    resolve_concept,
    set_active,
)
from sepme_engine.names import close_matches, did_you_mean, is_path_like, lookup_names
from sepme_engine.store import Store, validate_name


@dataclass(frozen=True)
class CompositionResult:
    base: str
    active: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    saved_as: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "active": list(self.active),
            "added": list(self.added),
            "removed": list(self.removed),
            "saved_as": self.saved_as,
        }


@dataclass(frozen=True)
class VariantInfo:
    base: str
    name: str
    active: tuple[str, ...]
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "name": self.name,
            "active": list(self.active),
            "created": self.created,
        }


def _stored_name(store: Store, base: str, text: str) -> str:
    """`text` as stored: itself if an increment has that name, else its slug (if it has one)."""
    try:
        return resolve_concept(store, base, text)
    except NotFound:
        try:
            return concept_name(text)
        except InvalidInput:
            return text


def _split(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        out.extend(x.strip() for x in item.split(",") if x.strip())
    return out


def _variant_names(store: Store, base: str) -> list[str]:
    return [k.split("/", 1)[1] for k in store.list_manifests("variants", base)]


def resolve_variant(store: Store, base: str, name: str) -> str:
    """The stored variant `name` names (as given, else lowercased); NotFound with suggestions."""
    if is_path_like(name):
        validate_name(name, "variant name")  # refused: a lookup never builds a path from it
    for cand in lookup_names(name):
        if store.has_manifest("variants", f"{base}/{cand}"):
            return cand
    raise NotFound(
        f"no variant {name!r} on base {base!r}",
        kind="variant",
        name=name,
        base=base,
        candidates=close_matches(name.strip().lower(), _variant_names(store, base)),
    )


def get_variant(store: Store, base: str, name: str) -> VariantInfo:
    name = resolve_variant(store, base, name)
    data = store.read_manifest("variants", f"{base}/{name}")
    return VariantInfo(base, name, tuple(data.get("active", [])), data.get("created", ""))


def remove_variant(
    store: Store, base: str | None, name: str, *, dry_run: bool = False
) -> VariantInfo:
    """Delete a saved variant (its increments stay)."""
    info = get_base(store, base)
    variant = get_variant(store, info.name, name)
    if not dry_run:
        with store.locked():
            store.delete_manifest("variants", f"{info.name}/{variant.name}")
    return variant


def rename_variant(
    store: Store, base: str | None, old: str, new: str, *, force: bool = False
) -> VariantInfo:
    """Rename a saved variant; refuse to replace an existing one unless `force`."""
    info = get_base(store, base)
    variant = get_variant(store, info.name, old)
    validate_name(new, "variant name")
    if new == variant.name:
        return variant
    with store.locked():
        if store.has_manifest("variants", f"{info.name}/{new}") and not force:
            raise AlreadyExists(
                f"variant {new!r} exists on base {info.name!r}",
                kind="variant",
                name=new,
                base=info.name,
            )
        data = store.read_manifest("variants", f"{info.name}/{variant.name}")
        store.write_manifest("variants", f"{info.name}/{new}", data)
        store.delete_manifest("variants", f"{info.name}/{variant.name}")
    return VariantInfo(info.name, new, variant.active, variant.created)


def list_variants(store: Store, base: str | None = None) -> list[VariantInfo]:
    info = get_base(store, base)
    return [
        get_variant(store, info.name, k.split("/", 1)[1])
        for k in store.list_manifests("variants", info.name)
    ]


def compose(
    store: Store,
    base: str | None = None,
    *,
    erase: Sequence[str] = (),
    restore: Sequence[str] = (),
    from_variant: str | None = None,
    name: str | None = None,
    force: bool = False,
) -> CompositionResult:
    """Change the active composition: start from the current one (or a variant), add `erase`,
    drop `restore`; optionally save the result as variant `name` (an existing one only with
    `force`). Concept names are looked up as `erase` stores them ('Red' -> 'red')."""
    info = get_base(store, base)
    erase_l = [resolve_concept(store, info.name, c) for c in _split(erase)]  # NotFound + hint
    restore_l = [_stored_name(store, info.name, c) for c in _split(restore)]
    both = sorted(set(erase_l) & set(restore_l))
    if both:
        raise InvalidInput(
            f"{', '.join(both)} both erased and restored",
            hint="name each concept once",
            kind="erase-and-restore",
        )
    if name is not None:
        validate_name(name, "variant name")
        if store.has_manifest("variants", f"{info.name}/{name}") and not force:
            raise AlreadyExists(
                f"variant {name!r} exists on base {info.name!r}",
                kind="variant",
                name=name,
                base=info.name,
            )
    with store.locked():
        before = set(active_set(store, info.name))
        start = (
            set(get_variant(store, info.name, from_variant).active) if from_variant else set(before)
        )
        unknown = [c for c in restore_l if c not in start]
        if unknown:
            close = did_you_mean(unknown[0], start)
            raise InvalidInput(
                f"{', '.join(unknown)} is not erased on base {info.name!r}",
                hint=(close + " " if close else "")
                + f"active now: {', '.join(sorted(start)) or 'none'}",
            )
        after = (start | set(erase_l)) - set(restore_l)
        set_active(store, info.name, sorted(after))
        if name is not None:
            store.write_manifest(
                "variants",
                f"{info.name}/{name}",
                {
                    "kind": "variant",
                    "base": info.name,
                    "active": sorted(after),
                    "created": now_iso(),
                },
            )
    return CompositionResult(
        base=info.name,
        active=tuple(sorted(after)),
        added=tuple(sorted(after - before)),
        removed=tuple(sorted(before - after)),
        saved_as=name,
    )


def selection(
    store: Store, base: BaseInfo, *, variant: str | None = None, erase: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The concepts a command works on: a variant, an explicit --erase list, or the active set."""
    if variant and erase:
        raise InvalidInput(
            "both a variant and a list of increments were given",
            hint="give one of them",
            kind="variant-and-erase",
        )
    if variant:
        names = list(get_variant(store, base.name, variant).active)
    elif erase:
        names = [resolve_concept(store, base.name, c) for c in _split(erase)]
    else:
        names = active_set(store, base.name)
    return tuple(sorted(set(names)))


def composition_deltas(store: Store, base: BaseInfo, names: Sequence[str]) -> dict[str, Any]:
    """D = Σ ΔW_i in float32, canonical order; checks each increment's base digest and layers."""
    from sepme_engine.delta.composition import sum_deltas

    incs = [
        load_increment(store, get_increment(store, base.name, n), base) for n in sorted(set(names))
    ]
    return sum_deltas(incs)
