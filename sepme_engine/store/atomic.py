"""Atomic writes, the one way sepme writes a file or folder: stage it under a temporary
`<prefix>.<pid>.<random>.incomplete` name (in the destination's folder, or the store's tmp/),
fsync it, `os.replace` it into place, fsync the folder. Any exception (KeyboardInterrupt
included) removes the temporary and leaves the destination as it was; a kill leaves only the
`.incomplete` temporary, which `clean_stale` removes once its process is gone.

`atomic_write` is the helper; `atomic_open` (the store's manifests, small outputs), the store's
blobs and views, and the exporters (`export/_atomic.py`) are built on it. No torch here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

INCOMPLETE_SUFFIX = ".incomplete"


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename inside it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def temp_name(folder: Path, prefix: str) -> Path:
    """A fresh temporary path `<prefix>.<pid>.<random>.incomplete` in `folder`: the pid lets
    `clean_stale` tell a dead writer's leftovers from a live one's."""
    return Path(folder) / f"{prefix}.{os.getpid()}.{uuid.uuid4().hex[:8]}{INCOMPLETE_SUFFIX}"


_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+\.incomplete(\.old)?$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def owner_pid(name: str) -> int | None:
    """The process id a sepme temporary's name carries (`<...>.<pid>.<random>.incomplete`)."""
    m = _PID.search(name)
    return int(m.group(1)) if m else None


def clean_stale(folder: Path, prefix: str = "") -> list[Path]:
    """Remove the `.incomplete` temporaries in `folder` (starting with `prefix`) whose writing
    process is gone — a kill left them; a live writer's are kept. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = owner_pid(entry.name)
        if pid is None or pid_alive(pid):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def remove_path(path: Path) -> None:
    """Remove a file, a symlink or a folder tree (never following a link); absent is fine."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@dataclass
class Staged:
    """What `atomic_write` yields: write to `path`. `dest` may be set inside the block (a
    content-addressed blob learns its name from its hash); set `keep_existing` when `dest`
    already holds this content, and the temporary is dropped instead of renamed."""

    path: Path
    dest: Path | None
    keep_existing: bool = False


@contextlib.contextmanager
def atomic_write(
    dest: Path | None,
    *,
    folder: Path | None = None,
    prefix: str | None = None,
    directory: bool = False,
    before_rename: Callable[[], None] | None = None,
    after_rename: Callable[[], None] | None = None,
) -> Iterator[Staged]:
    """Stage a file (`directory=False`: a fresh path, not yet created) or a folder (created)
    under a temporary name, then put it at `dest` atomically.

    The temporary goes in `folder` (default: `dest`'s folder; same file system, so the rename is
    atomic), named `<prefix>.<pid>.<random>.incomplete` (default prefix: "." + `dest`'s name).
    After the block: the staged file or tree is fsynced, `before_rename` runs (re-checks, fault
    points), the temporary replaces `dest` (a folder already at `dest` is moved aside first and
    removed only once the new one is in place), the folder is fsynced, `after_rename` runs. On
    any exception the temporary is removed (and a moved-aside folder put back).
    """
    if folder is None:
        assert dest is not None, "a temporary needs a folder or a destination"
        folder = Path(dest).parent
    folder = Path(folder)
    if prefix is None:
        assert dest is not None, "a temporary needs a prefix or a destination"
        prefix = "." + Path(dest).name
    folder.mkdir(parents=True, exist_ok=True)
    staged = Staged(temp_name(folder, prefix), Path(dest) if dest is not None else None)
    if directory:
        staged.path.mkdir()
    old: Path | None = None
    try:
        yield staged
        if directory:
            fsync_tree(staged.path)
        elif staged.path.exists():
            fsync_file(staged.path)
        if before_rename is not None:
            before_rename()
        target = staged.dest
        assert target is not None, "atomic_write: no destination was set"
        if staged.keep_existing:
            remove_path(staged.path)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if directory and (target.exists() or target.is_symlink()):
                old = Path(f"{temp_name(target.parent, '.' + target.name)}.old")
                os.replace(target, old)
            try:
                os.replace(staged.path, target)
            except BaseException:
                if old is not None:
                    os.replace(old, target)
                    old = None
                raise
    except BaseException:
        remove_path(staged.path)
        raise
    if not staged.keep_existing:
        fsync_dir(target.parent)
        if old is not None:
            remove_path(old)
        if after_rename is not None:
            after_rename()


@contextlib.contextmanager
def atomic_open(dest: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary `.<name>.<pid>.<rand>.incomplete` beside `dest`; on success it replaces
    `dest`. Stale temporaries of `dest` that a killed process left are removed first.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `dest` is
    left as it was.
    """
    from sepme_engine.store import faults

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest.parent, f".{dest.name}.")
    with (
        atomic_write(
            dest,
            before_rename=lambda: faults.point("manifest.before-rename"),
            after_rename=lambda: faults.point("manifest.after-rename"),
        ) as staged,
        open(staged.path, "x" + mode.replace("w", "")) as fh,
    ):
        yield fh


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_open(dest, "wb") as fh:
        fh.write(data)


def write_json(dest: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes(dest, text.encode("utf-8"))
