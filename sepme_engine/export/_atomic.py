"""Complete-or-absent outputs: write under a temporary name in the destination folder, rename.

A file is written to `.<name>.<random>.incomplete` next to its destination, fsynced, then moved
into place with `os.replace`; a folder is built under such a name and renamed. Any exception
(including KeyboardInterrupt) removes the temporary, so the destination is never left half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from sepme_engine.errors import AlreadyExists, InvalidInput

INCOMPLETE_SUFFIX = ".incomplete"
log = logging.getLogger("sepme")


def temp_name(dest: Path) -> Path:
    """A fresh hidden temporary path in `dest`'s folder (same file system, so rename is atomic):
    `.<name>.<pid>.<random>.incomplete`, so a later export can tell its own stale ones."""
    return dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{INCOMPLETE_SUFFIX}"


def clean_stale_temporaries(dest: Path) -> list[Path]:
    """Remove the temporaries of earlier exports to `dest` whose process is gone (a kill left
    them); a running export's are kept. Each removal is logged on the "sepme" logger (the CLI
    prints it)."""
    from sepme_engine.store.atomic import clean_stale

    removed = clean_stale(dest.parent, f".{dest.name}.")
    for path in removed:
        log.warning("removed %s, left by an interrupted export", path)
    return removed


def check_destination(dest: Path, *, force: bool, want_dir: bool) -> None:
    """Refuse an existing destination unless `force`; refuse to swap a file for a folder."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if not force:
        raise AlreadyExists(
            f"{dest} already exists",
            hint="choose another output path or pass --force to replace it",
        )
    if want_dir and not dest.is_dir():
        raise InvalidInput(
            f"{dest} exists and is not a folder",
            hint="remove it or choose another output path",
        )
    if not want_dir and dest.is_dir():
        raise InvalidInput(
            f"{dest} exists and is a folder",
            hint="remove it or choose another output path",
        )


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


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


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_file(dest: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `dest`, on failure it is removed.

    The caller must flush and fsync what it writes to the yielded path.
    """
    from sepme_engine.store import faults

    dest = Path(dest)
    check_destination(dest, force=force, want_dir=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest)
    tmp = temp_name(dest)
    try:
        yield tmp
        check_destination(dest, force=force, want_dir=False)
        faults.point("export.before-rename")
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_dir(dest: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it becomes `dest` (an old `dest` is removed
    only after the new one is in place), on failure it is removed."""
    from sepme_engine.store import faults

    dest = Path(dest)
    check_destination(dest, force=force, want_dir=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest)
    tmp = temp_name(dest)
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        faults.point("export.mid-write")  # the folder is written, not yet fsynced nor renamed
        fsync_tree(tmp)
        check_destination(dest, force=force, want_dir=True)
        faults.point("export.before-rename")
        if dest.exists():
            old = temp_name(dest).with_name(temp_name(dest).name + ".old")
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old, dest)
                old = None
            raise
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(dest.parent)
    if old is not None:
        _remove(old)
