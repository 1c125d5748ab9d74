"""Store root, lock, blobs and manifests.

Layout (ollama-style manifests over content-addressed blobs)::

    $SEPME_HOME/
      config.toml                     user defaults (optional)
      state.json                      default base
      store.lock                      held by every mutation
      blobs/sha256-<hex>              immutable content
      tmp/                            *.incomplete files while writing
      views/<hex>/...                 hard-link trees that give blobs their original file names
      cache/                          regenerable data (training latents)
      manifests/bases/<name>.json
      manifests/increments/<base>/<concept>.json
      manifests/compositions/<base>.json
      manifests/variants/<base>/<name>.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.errors import (
    ConfigError,
    CorruptEntry,
    InvalidName,
    NotFound,
    SchemaTooNew,
    StoreLocked,
)
from sepme_engine.names import slugify
from sepme_engine.store import faults
from sepme_engine.store.atomic import Staged, atomic_write, clean_stale, temp_name, write_json
from sepme_engine.store.schema import DIGEST, HINT, blob_error, check_manifest, kind_of

SCHEMA_VERSION = 1
CHUNK = 8 * 1024 * 1024
KINDS = ("bases", "increments", "compositions", "variants")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_name(name: str, what: str = "name") -> str:
    """Names are lowercase slugs: letters, digits, '.', '_' and '-', starting with a letter/digit."""
    if isinstance(name, str) and _NAME.match(name) and ".." not in name:
        return name
    name = str(name)
    suggestion = slugify(name)
    if len(name) > 80:
        name = name[:77] + "..."
    hint = f"try {suggestion!r}" if suggestion else "use letters, digits, '.', '_' or '-'"
    raise InvalidName(
        f"invalid {what} {name!r}: use lowercase letters, digits, '.', '_' and '-' "
        "(no '/', '..', spaces or control characters)",
        hint=hint,
    )


@dataclass(frozen=True)
class BlobRef:
    digest: str  # "sha256:<hex>"
    size: int

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlobRef:
        """A validated reference: 'sha256:<64 hex>' and a non-negative integer size."""
        problem = blob_error(data)
        if problem:
            raise CorruptEntry(
                f"malformed blob reference {str(data)[:120]}: {problem}", hint=HINT, kind="store"
            )
        return cls(data["digest"], data["size"])


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> BlobRef:
    h = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return BlobRef("sha256:" + h.hexdigest(), size)


def default_root() -> Path:
    env = os.environ.get("SEPME_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("sepme", appauthor=False))


class Store:
    """A sepme store rooted at `root`. Engine functions take one; there is no global store."""

    def __init__(self, root: Path | None = None, lock_timeout: float | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(
                f"the store root {self.root} is not a folder",
                hint="point SEPME_HOME at a folder (or unset it for the default store)",
            )
        if lock_timeout is None:
            lock_timeout = float(os.environ.get("SEPME_LOCK_TIMEOUT", "600"))
        self.lock_timeout = lock_timeout
        self.on_lock_wait: Callable[[str], None] | None = None

    # -- layout ---------------------------------------------------------------------------
    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def views_dir(self) -> Path:
        return self.root / "views"

    def ensure(self) -> None:
        for d in (self.blobs_dir, self.tmp_dir, self.root / "manifests"):
            d.mkdir(parents=True, exist_ok=True)
        clean_stale(self.tmp_dir)

    # -- paths ----------------------------------------------------------------------------
    def inside(self, path: Path) -> Path:
        """`path` with every symlink resolved, refused unless it stays inside the store root."""
        root = self.root.resolve()
        real = Path(os.path.realpath(path))
        if real != root and root not in real.parents:
            raise CorruptEntry(
                f"{path} leads outside the store ({real}); sepme does not follow it",
                hint="replace the symbolic link with a folder",
                kind="store",
            )
        return real

    def safe_delete(self, path: Path) -> None:
        """Delete a file or folder of the store without following a symlinked folder anywhere:
        the folders above it must resolve inside the root; a symlink is removed, not its target."""
        path = Path(path)
        try:
            rel = path.parent.relative_to(self.root)
        except ValueError:
            raise CorruptEntry(f"refusing to delete {path}: it is not inside the store") from None
        parent = self.inside(path.parent)
        if parent != self.root.resolve() / rel:
            raise CorruptEntry(
                f"refusing to delete {path}: a folder on its way is a symbolic link",
                hint="replace the symbolic link with a folder",
                kind="store",
            )
        if not parent.is_dir():
            return
        target = parent / path.name
        if target.is_symlink() or not target.is_dir():
            target.unlink(missing_ok=True)
        else:
            shutil.rmtree(target)  # rmtree never follows links inside the tree

    # -- lock -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock. Re-entrant: every Store of this root in this process shares one
        `FileLock`, which counts nested acquisitions. Says so when it has to wait."""
        from filelock import Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = _store_lock(self.root)
        try:
            lock.acquire(timeout=0.2)
        except Timeout:
            if self.on_lock_wait:
                self.on_lock_wait(f"waiting for the store lock at {self.root / 'store.lock'} …")
            try:
                lock.acquire(timeout=self.lock_timeout)
            except Timeout as exc:
                raise StoreLocked(
                    f"another sepme process holds the store lock ({self.root / 'store.lock'})",
                    hint="wait for it to finish, or raise SEPME_LOCK_TIMEOUT",
                ) from exc
        try:
            yield
        finally:
            lock.release()

    # -- blobs ----------------------------------------------------------------------------
    def blob_path(self, ref: BlobRef | str) -> Path:
        digest = ref.digest if isinstance(ref, BlobRef) else ref
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise CorruptEntry(
                f"malformed blob digest {str(digest)[:80]!r}", hint=HINT, kind="store"
            )
        return self.blobs_dir / ("sha256-" + digest.split(":", 1)[1])

    def _check_record(self, ref: BlobRef) -> Path:
        return self.cache_dir / "checked" / ref.hex

    def _record_checked(self, ref: BlobRef, path: Path) -> None:
        st = path.stat()
        with contextlib.suppress(OSError):
            write_json(self._check_record(ref), [st.st_size, st.st_mtime_ns])

    def check_blob(self, ref: BlobRef, *, always: bool = False) -> Path:
        """The blob's path after checking its content against its digest: every time when
        `always`, else only when its size or mtime changed since the last check (recorded in
        cache/checked/). A missing or damaged blob is a CorruptEntry naming it."""
        path = self.blob_path(ref)
        hint = "remove and re-create the entries that use it"
        try:
            st = path.stat()
        except FileNotFoundError:
            raise CorruptEntry(
                f"blob {ref.digest} is missing from the store", hint=hint, kind="store"
            ) from None
        if not always:
            try:
                seen = json.loads(self._check_record(ref).read_text())
                if seen == [st.st_size, st.st_mtime_ns] and st.st_size == ref.size:
                    return path
            except (OSError, ValueError):
                pass
        actual = hash_file(path)
        if actual != ref:
            raise CorruptEntry(
                f"blob {ref.digest} is corrupt (its content hashes to {actual.digest}, "
                f"{actual.size} bytes)",
                hint=hint,
                kind="store",
            )
        if not always:
            self._record_checked(ref, path)
        return path

    def has_blob(self, ref: BlobRef) -> bool:
        p = self.blob_path(ref)
        return p.is_file() and p.stat().st_size == ref.size

    def incomplete_path(self, name: str) -> Path:
        """A fresh `.incomplete` path in tmp/ for a scratch file (caller renames or removes)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return temp_name(self.tmp_dir, name)

    def put_blob_file(
        self, src: Path, *, move: bool = False, progress: Callable[[int], None] | None = None
    ) -> BlobRef:
        """Copy (or move) `src` into blobs/, hashing on the way. Idempotent for equal content."""
        src = Path(src)
        self.ensure()
        with self._staged_blob() as staged:
            h = hashlib.sha256()
            size = 0
            with src.open("rb") as fin, staged.path.open("xb") as fout:
                while chunk := fin.read(CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
            ref = BlobRef("sha256:" + h.hexdigest(), size)
            staged.dest = self.blob_path(ref)
            staged.keep_existing = staged.dest.exists() and staged.dest.stat().st_size == size
        if not staged.keep_existing:
            self._record_checked(ref, staged.dest)
        if move:
            src.unlink()
        return ref

    def put_blob_bytes(self, data: bytes) -> BlobRef:
        self.ensure()
        ref = BlobRef("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        if not self.has_blob(ref):
            with self._staged_blob() as staged:
                staged.path.write_bytes(data)
                staged.dest = self.blob_path(ref)
        return ref

    def _staged_blob(self) -> contextlib.AbstractContextManager[Staged]:
        """A blob staged in tmp/ (`blob.<pid>.<rand>.incomplete`); the caller sets its
        destination once the content is hashed."""
        return atomic_write(
            None,
            folder=self.tmp_dir,
            prefix="blob",
            before_rename=lambda: faults.point("blob.before-rename"),
        )

    def view(self, key: str, files: dict[str, BlobRef]) -> Path:
        """A folder whose files (hard links to blobs) give blobs their original relative names.

        Loaders that care about file names and layouts (diffusers) read from it.
        """
        dest = self.views_dir / key
        marker = dest / ".complete"
        if marker.exists():
            return dest
        with self.locked():
            if marker.exists():
                return dest
            if dest.exists() or dest.is_symlink():  # an unfinished view: never through a link
                self.safe_delete(dest)
            with atomic_write(dest, folder=self.tmp_dir, prefix=key, directory=True) as staged:
                for rel, ref in files.items():
                    target = staged.path / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    blob = self.blob_path(ref)
                    if not blob.exists():
                        raise CorruptEntry(
                            f"blob {ref.digest} for {rel} is missing from the store",
                            hint="re-add the base",
                            kind="store",
                        )
                    try:  # hard links keep the file name loaders look at (symlinks get resolved)
                        os.link(blob, target)
                    except OSError:
                        shutil.copyfile(blob, target)
                (staged.path / ".complete").write_text("")
        return dest

    # -- manifests ------------------------------------------------------------------------
    def manifest_path(self, kind: str, key: str) -> Path:
        """The manifest file of `key`, after validating every part of the key as a name
        ("base" or "base/name"), so no lookup can reach outside its folder."""
        assert kind in KINDS, kind
        what = {"bases": "base", "compositions": "base", "increments": "concept"}.get(
            kind, "variant"
        )
        if kind in ("increments", "variants"):
            base, _, name = str(key).partition("/")
            validate_name(base, "base name")
            validate_name(name, f"{what} name")
        else:
            validate_name(key, f"{what} name")
        return self.root / "manifests" / kind / f"{key}.json"

    def read_manifest(self, kind: str, key: str) -> dict[str, Any]:
        path = self.manifest_path(kind, key)
        if not path.is_file():
            raise NotFound(f"no {kind[:-1]} {key!r} in the store")
        self.inside(path)
        return self.load_manifest_file(path, kind)

    def load_manifest_file(self, path: Path, kind: str | None = None) -> dict[str, Any]:
        """Parse a manifest through the typed loader (store/schema.py): a field of the wrong
        type is a CorruptEntry naming the file and the field."""
        data = self._load_json(path)
        if kind is None:
            kind = "state" if path.name == "state.json" else kind_of(path, self.root / "manifests")
        check_manifest(kind, data, path)
        return data

    @staticmethod
    def _load_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CorruptEntry(
                f"manifest {path} is unreadable: {exc}",
                hint=HINT,
                kind="store",
            ) from exc
        if not isinstance(data, dict) or "schema_version" not in data:
            raise CorruptEntry(
                f"manifest {path} has no schema_version",
                hint=HINT,
                kind="store",
            )
        version = data["schema_version"]
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} was written by a newer sepme (schema {version}, this sepme reads "
                f"{SCHEMA_VERSION})",
                hint="upgrade sepme (pip install -U sepme)",
            )
        return data

    def write_manifest(self, kind: str, key: str, data: dict[str, Any]) -> None:
        data = {"schema_version": SCHEMA_VERSION, **data}
        with self.locked():
            path = self.manifest_path(kind, key)
            self.inside(path.parent)  # before creating anything: no folder made through a link
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, data)

    def delete_manifest(self, kind: str, key: str) -> None:
        """Remove a manifest; never through a symlinked folder, never outside the store."""
        with self.locked():
            path = self.manifest_path(kind, key)
            self.safe_delete(path)
            parent = path.parent
            if (
                parent != self.root / "manifests" / kind
                and parent.is_dir()
                and not parent.is_symlink()
                and not any(parent.iterdir())
            ):
                parent.rmdir()

    def has_manifest(self, kind: str, key: str) -> bool:
        return self.manifest_path(kind, key).is_file()

    def list_manifests(self, kind: str, prefix: str = "") -> list[str]:
        base = self.root / "manifests" / kind
        if prefix:
            base = base / validate_name(prefix, "base name")
        if not base.is_dir():
            return []
        root = self.root / "manifests" / kind
        self.inside(base)
        keys = [str(p.relative_to(root))[: -len(".json")] for p in base.rglob("*.json")]
        return sorted(k for k in keys if not Path(k).name.startswith(".") and _valid_key(k))

    def all_manifest_files(self) -> list[Path]:
        base = self.root / "manifests"
        return sorted(base.rglob("*.json")) if base.is_dir() else []

    # -- state ----------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        if not path.is_file():
            return {"schema_version": SCHEMA_VERSION}
        return self.load_manifest_file(path, "state")

    def write_state(self, **changes: Any) -> None:
        with self.locked():
            state = self.read_state()
            state.update(changes)
            state["schema_version"] = SCHEMA_VERSION
            write_json(self.root / "state.json", state)


_LOCKS: dict[str, Any] = {}
_LOCKS_GUARD = threading.Lock()


def _store_lock(root: Path) -> Any:
    """The one `FileLock` of the store at `root` in this process (keyed by the real path of its
    lock file, so `Store(p)` and `Store(Path(p).resolve())` share it)."""
    from filelock import FileLock

    path = os.path.realpath(root / "store.lock")
    with _LOCKS_GUARD:
        lock = _LOCKS.get(path)
        if lock is None:
            lock = _LOCKS[path] = FileLock(path)
        return lock


def _valid_key(key: str) -> bool:
    return all(_NAME.match(p) and ".." not in p for p in key.split("/"))
