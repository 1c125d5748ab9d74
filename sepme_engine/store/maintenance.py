"""`store verify` and `store prune`: re-hash blobs, find dangling references and leftovers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.errors import CorruptEntry, SepmeError
from sepme_engine.store import faults
from sepme_engine.store.atomic import owner_pid, pid_alive
from sepme_engine.store.core import BlobRef, Store, hash_file


@dataclass(frozen=True)
class Problem:
    # "corrupt-blob" | "missing-blob" | "bad-manifest" | "leftover" | "missing-link" | "orphan"
    # | "symlink" (a store folder that leads elsewhere)
    kind: str
    path: str
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    root: str
    blobs_checked: int
    manifests_checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "blobs_checked": self.blobs_checked,
            "manifests_checked": self.manifests_checked,
            "problems": [dict(p.__dict__) for p in self.problems],
        }


@dataclass(frozen=True)
class PruneReport:
    root: str
    dry_run: bool
    removed: tuple[str, ...]
    bytes_freed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": list(self.removed),
            "bytes_freed": self.bytes_freed,
        }


def blob_refs(data: Any) -> list[BlobRef]:
    """Every {digest, size} reference inside a manifest."""
    found: list[BlobRef] = []
    if isinstance(data, dict):
        if isinstance(data.get("digest"), str) and "size" in data:
            found.append(BlobRef.from_dict(data))  # validated: CorruptEntry if malformed
        for value in data.values():
            found.extend(blob_refs(value))
    elif isinstance(data, list):
        for value in data:
            found.extend(blob_refs(value))
    return found


STORE_DIRS = ("blobs", "tmp", "views", "cache", "manifests")


def _symlinked(store: Store) -> list[Path]:
    """Store folders (top level and manifests/*, manifests/*/*) that are symbolic links."""
    out = [store.root / d for d in STORE_DIRS if (store.root / d).is_symlink()]
    manifests = store.root / "manifests"
    if manifests.is_dir() and not manifests.is_symlink():
        for kind in sorted(manifests.iterdir()):
            if kind.is_symlink():
                out.append(kind)
            elif kind.is_dir():
                out.extend(p for p in sorted(kind.iterdir()) if p.is_symlink())
    return out


def _live(path: Path) -> bool:
    """A temporary whose writer is still running (its name carries a live pid)."""
    pid = owner_pid(path.name)
    return pid is not None and pid_alive(pid)


def _leftovers(store: Store) -> list[Path]:
    out: list[Path] = []
    if store.tmp_dir.is_dir() and not store.tmp_dir.is_symlink():
        out.extend(p for p in sorted(store.tmp_dir.iterdir()) if not _live(p))
    for base in (store.root / "manifests", store.blobs_dir):
        if base.is_dir() and not base.is_symlink():
            out.extend(p for p in sorted(base.rglob("*.incomplete")) if not _live(p))
    return out


def _orphans(store: Store) -> list[tuple[Path, str]]:
    """Increments, compositions and variants of a base that is not in the store."""
    from sepme_engine.store.schema import _NAME

    try:
        bases = set(store.list_manifests("bases")) | {"toy"}
    except SepmeError:  # manifests/bases leads outside the store: reported as a symlink
        return []
    out: list[tuple[Path, str]] = []
    root = store.root / "manifests"
    for kind in ("increments", "variants", "compositions"):
        folder = root / kind
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(folder.rglob("*.json")):
            rel = path.relative_to(folder)
            base = rel.parts[0] if len(rel.parts) > 1 else rel.name[: -len(".json")]
            if _NAME.match(base) and base not in bases:
                out.append((path, f"belongs to base {base!r}, which is not in the store"))
    return out


def _referenced(store: Store, problems: list[Problem] | None) -> set[str]:
    refs: set[str] = set()
    for path in store.all_manifest_files():
        try:
            store.inside(path)
            data = store.load_manifest_file(path)
            found = blob_refs(data)
        except SepmeError as exc:
            if problems is not None:
                problems.append(Problem("bad-manifest", str(path), str(exc)))
            continue
        for ref in found:
            refs.add(ref.digest)
            if problems is not None and not store.has_blob(ref):
                problems.append(
                    Problem("missing-blob", str(path), f"references missing {ref.digest}")
                )
        link = data.get("link")
        if problems is not None and isinstance(link, dict):
            target = Path(str(link.get("path", "")))
            if not target.exists():
                problems.append(
                    Problem("missing-link", str(path), f"linked source {target} is gone")
                )
    return refs


def _base_digests(store: Store) -> set[str]:
    out: set[str] = set()
    for key in store.list_manifests("bases"):
        try:
            digest = store.read_manifest("bases", key).get("base_digest", "")
        except SepmeError:
            continue
        out.add(str(digest).split(":", 1)[-1])
    return out


def verify(store: Store, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    problems: list[Problem] = []
    links = _symlinked(store)
    for link in links:
        problems.append(
            Problem("symlink", str(link), f"leads outside the store layout to {os.readlink(link)}")
        )
    if store.blobs_dir in links:
        blobs: list[Path] = []
    else:
        blobs = sorted(store.blobs_dir.glob("sha256-*")) if store.blobs_dir.is_dir() else []
    for i, blob in enumerate(blobs):
        if blob.name.endswith(".incomplete"):
            continue
        expected = "sha256:" + blob.name.split("-", 1)[1]
        actual = hash_file(blob).digest
        if actual != expected:
            problems.append(Problem("corrupt-blob", str(blob), f"content hashes to {actual}"))
        if progress:
            progress(i + 1, len(blobs))
    manifests = store.all_manifest_files()
    _referenced(store, problems)
    for path, detail in _orphans(store):
        problems.append(Problem("orphan", str(path), detail))
    for path in _leftovers(store):
        problems.append(Problem("leftover", str(path), "partial write left behind"))
    return VerifyReport(str(store.root), len(blobs), len(manifests), tuple(problems))


def prune(store: Store, dry_run: bool = False) -> PruneReport:
    """Remove unreferenced blobs, stale views and leftovers. Refuses a store whose folders are
    symbolic links (it never deletes through one, nor anything outside the root)."""
    removed: list[str] = []
    freed = 0
    with store.locked():
        links = _symlinked(store)
        if links:
            raise CorruptEntry(
                f"{links[0]} is a symbolic link; `store prune` does not delete through links",
                hint="replace it with a real folder",
                kind="store",
            )
        refs = _referenced(store, None)
        candidates: list[Path] = []
        if store.blobs_dir.is_dir():
            for blob in sorted(store.blobs_dir.iterdir()):
                if _live(blob):
                    continue
                digest = "sha256:" + blob.name.split("-", 1)[-1]
                if digest not in refs:
                    candidates.append(blob)
        candidates.extend(_leftovers(store))
        if store.views_dir.is_dir():
            live = {r.split(":", 1)[1] for r in refs} | _base_digests(store)
            for view in sorted(store.views_dir.iterdir()):
                if view.name not in live:
                    candidates.append(view)
        for path in candidates:
            size = path.lstat().st_size if path.is_file() and not path.is_symlink() else 0
            removed.append(str(path))
            freed += size
            if not dry_run:
                faults.point("prune.mid")
                store.safe_delete(path)
    return PruneReport(str(store.root), dry_run, tuple(removed), freed)
