"""`store verify` and `store prune`: re-hash blobs, find dangling references and leftovers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.errors import SepmeError
from sepme_engine.store.core import BlobRef, Store, hash_file


@dataclass(frozen=True)
class Problem:
    kind: str  # "corrupt-blob" | "missing-blob" | "bad-manifest" | "leftover" | "missing-link"
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


@dataclass(frozen=True)
class PruneReport:
    root: str
    dry_run: bool
    removed: tuple[str, ...]
    bytes_freed: int


def blob_refs(data: Any) -> list[BlobRef]:
    """Every {digest, size} reference inside a manifest."""
    found: list[BlobRef] = []
    if isinstance(data, dict):
        if isinstance(data.get("digest"), str) and "size" in data:
            found.append(BlobRef.from_json(data))
        for value in data.values():
            found.extend(blob_refs(value))
    elif isinstance(data, list):
        for value in data:
            found.extend(blob_refs(value))
    return found


def _leftovers(store: Store) -> list[Path]:
    out: list[Path] = []
    if store.tmp_dir.is_dir():
        out.extend(sorted(store.tmp_dir.iterdir()))
    for base in (store.root / "manifests", store.blobs_dir):
        if base.is_dir():
            out.extend(sorted(base.rglob("*.incomplete")))
    return out


def _referenced(store: Store, problems: list[Problem] | None) -> set[str]:
    refs: set[str] = set()
    for path in store.all_manifest_files():
        try:
            data = store.load_manifest_file(path)
        except SepmeError as exc:
            if problems is not None:
                problems.append(Problem("bad-manifest", str(path), str(exc)))
            continue
        for ref in blob_refs(data):
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
    for path in _leftovers(store):
        problems.append(Problem("leftover", str(path), "partial write left behind"))
    return VerifyReport(str(store.root), len(blobs), len(manifests), tuple(problems))


def prune(store: Store, dry_run: bool = False) -> PruneReport:
    removed: list[str] = []
    freed = 0
    with store.locked():
        refs = _referenced(store, None)
        candidates: list[Path] = []
        if store.blobs_dir.is_dir():
            for blob in sorted(store.blobs_dir.iterdir()):
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
            size = path.stat().st_size if path.is_file() else 0
            removed.append(str(path))
            freed += size
            if not dry_run:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
    return PruneReport(str(store.root), dry_run, tuple(removed), freed)
