"""Move increments between stores: `sepme store export-increments DIR` / `sepme store import DIR`.

An export folder holds the increments' manifests and blobs and names the base each one is bound
to by its digest (the base itself is not copied: it is large and the other machine adds its own
copy of the same checkpoint)::

    DIR/sepme-export.json                 kind, schema, the increments (base, digest, active)
    DIR/manifests/<base>/<concept>.json   the increment manifests, as in the store
    DIR/blobs/sha256-<hex>                their tensors

Import checks every blob against its digest and finds, in the target store, a base with the
same digest (the same name first, else any) before it writes anything; then, under the store
lock, it stores the blobs and writes the manifests. Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine import __version__
from sepme_engine.errors import AlreadyExists, BaseMismatch, CorruptEntry, InvalidInput, NotFound
from sepme_engine.store import BlobRef, Store
from sepme_engine.store.core import SCHEMA_VERSION, hash_file
from sepme_engine.store.schema import check_manifest

INDEX = "sepme-export.json"


@dataclass(frozen=True)
class Moved:
    base: str  # the base's name in the store written to
    concept: str
    digest: str  # the increment's blob digest
    status: str  # exported / imported / unchanged (import: the same blob was there already)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TransferReport:
    folder: str
    items: tuple[Moved, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "items": [m.to_dict() for m in self.items]}


def export_increments(
    store: Store, dest: Path, *, base: str | None = None, concepts: list[str] | None = None
) -> TransferReport:
    """Write the increments of `base` (all, or `concepts`) to a new folder `dest`, atomically
    (a temporary sibling renamed at the end)."""
    from sepme_engine.bases import get_base
    from sepme_engine.increments import get_increment, list_increments

    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AlreadyExists(
            f"{dest} exists and is not an empty folder", hint="give a new folder to export to"
        )
    info = get_base(store, base)
    if concepts:
        incs = [get_increment(store, info.name, c) for c in concepts]
    else:
        incs = list_increments(store, info.name)
    if not incs:
        raise NotFound(
            f"base {info.name!r} has no increments to export",
            kind="no-increments",
            base=info.name,
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.incomplete"
    shutil.rmtree(tmp, ignore_errors=True)
    items = []
    try:
        (tmp / "blobs").mkdir(parents=True)
        for inc in incs:
            blob = store.check_blob(inc.blob, always=True)  # export nothing damaged
            shutil.copyfile(blob, tmp / "blobs" / blob.name)
            data = store.read_manifest("increments", f"{info.name}/{inc.concept}")
            path = tmp / "manifests" / info.name / f"{inc.concept}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
            items.append(Moved(info.name, inc.concept, inc.blob.digest, "exported"))
        index = {
            "kind": "increment-export",
            "schema_version": SCHEMA_VERSION,
            "sepme_version": __version__,
            "increments": [
                {
                    "base": info.name,
                    "base_digest": inc.base_digest,
                    "concept": inc.concept,
                    "active": inc.active,
                }
                for inc in incs
            ],
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TransferReport(str(dest), tuple(items))


def _read_index(src: Path) -> dict[str, Any]:
    path = src / INDEX
    if not path.is_file():
        raise NotFound(
            f"{src} is not an increment export (no {INDEX})",
            kind="export-folder",
            path=str(src),
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptEntry(
            f"{path} is unreadable: {exc}", hint="export the increments again"
        ) from None
    if not isinstance(data, dict) or data.get("kind") != "increment-export":
        raise CorruptEntry(f"{path} is not an increment export index", hint="export again")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        from sepme_engine.errors import SchemaTooNew

        raise SchemaTooNew(
            f"{path} was written by a newer sepme (schema {version})",
            hint="upgrade sepme (pip install -U sepme)",
        )
    if not isinstance(data.get("increments"), list):
        raise CorruptEntry(f"{path} lists no increments", hint="export the increments again")
    return data


def import_increments(
    store: Store, src: Path, *, force: bool = False, apply: bool = True, dry_run: bool = False
) -> TransferReport:
    """Import an export folder: every blob checked against its digest and every increment's base
    found by digest before anything is written; then, under the store lock, blobs and manifests.
    An increment already stored with the same blob is 'unchanged'; with another blob it is
    refused unless `force`. `apply`: those active in the source join the active composition."""
    from sepme_engine.bases import list_bases
    from sepme_engine.increments import active_set, has_increment, set_active

    src = Path(src)
    index = _read_index(src)
    by_digest: dict[str, list[str]] = {}
    for b in list_bases(store):
        by_digest.setdefault(b.base_digest, []).append(b.name)
    plan: list[tuple[str, str, dict[str, Any], Path, bool]] = []
    for entry in index["increments"]:
        if not isinstance(entry, dict):
            raise CorruptEntry(f"{src / INDEX}: malformed entry {entry!r}", hint="export again")
        src_base, concept, digest = (
            entry.get("base"),
            entry.get("concept"),
            entry.get("base_digest"),
        )
        mpath = src / "manifests" / str(src_base) / f"{concept}.json"
        if not mpath.is_file():
            raise CorruptEntry(f"{mpath} is missing from the export", hint="export again")
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"{mpath} is unreadable: {exc}", hint="export again") from None
        check_manifest("increments", data, mpath)
        if data.get("base_digest") != digest or data.get("concept") != concept:
            raise CorruptEntry(f"{mpath} does not match {INDEX}", hint="export again")
        names = by_digest.get(str(digest), [])
        if not names:
            raise BaseMismatch(
                f"increment {concept!r} was made for base {src_base!r} (digest "
                f"{str(digest)[:19]}…), and this store has no base with that digest",
                hint="add the same checkpoint first, then import again",
                kind="import",
                name=concept,
                base=str(src_base),
            )
        target = str(src_base) if src_base in names else names[0]
        ref = BlobRef.from_dict(data["blob"])
        blob = src / "blobs" / f"sha256-{ref.hex}"
        if not blob.is_file() or hash_file(blob) != ref:
            raise CorruptEntry(
                f"the blob of increment {concept!r} ({ref.digest[:19]}…) is missing or damaged "
                f"in {src}",
                hint="export the increments again",
            )
        plan.append((target, str(concept), data, blob, bool(entry.get("active"))))
    if not plan:
        raise InvalidInput(f"{src} holds no increments", hint="export some first")
    items: list[Moved] = []
    with store.locked():
        for target, concept, data, _, _ in plan:
            key = f"{target}/{concept}"
            if has_increment(store, target, concept) and not force:
                mine = store.read_manifest("increments", key)["blob"]["digest"]
                if mine != data["blob"]["digest"]:
                    raise AlreadyExists(
                        f"increment {concept!r} exists on base {target!r} with other tensors",
                        kind="increment",
                        name=concept,
                        base=target,
                    )
        for target, concept, data, blob, _active in plan:
            key = f"{target}/{concept}"
            same = (
                has_increment(store, target, concept)
                and store.read_manifest("increments", key)["blob"]["digest"]
                == data["blob"]["digest"]
            )
            items.append(
                Moved(target, concept, data["blob"]["digest"], "unchanged" if same else "imported")
            )
            if dry_run or same:
                continue
            ref = store.put_blob_file(blob)
            if ref.digest != data["blob"]["digest"]:  # changed since it was checked
                raise CorruptEntry(f"{blob} changed during the import", hint="import again")
            manifest = {k: v for k, v in data.items() if k != "schema_version"}
            store.write_manifest("increments", key, {**manifest, "base": target})
        if apply and not dry_run:
            for target in sorted({t for t, *_ in plan}):
                now = {c for t, c, _, _, a in plan if t == target and a}
                if now:
                    set_active(store, target, sorted(set(active_set(store, target)) | now))
    return TransferReport(str(src), tuple(items))
