"""Complete-or-absent export outputs, through the one atomic-write helper
(`store.atomic.atomic_write`): a file is written to `.<name>.<pid>.<random>.incomplete` next to
its destination, fsynced, then moved into place with `os.replace`; a folder is built under such a
name and renamed. Any exception (including KeyboardInterrupt) removes the temporary, so the
destination is never left half-written. Here: the destination checks (exists? file vs folder?),
the clean-up of a killed export's leftovers, and the export fault points.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from sepme_engine.errors import AlreadyExists, InvalidInput
from sepme_engine.store import faults
from sepme_engine.store.atomic import INCOMPLETE_SUFFIX, atomic_write, clean_stale

log = logging.getLogger("sepme")


def clean_stale_temporaries(dest: Path) -> list[Path]:
    """Remove the temporaries of earlier exports to `dest` whose process is gone (a kill left
    them); a running export's are kept. Each removal is logged on the "sepme" logger (the CLI
    prints it)."""
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
            hint="choose another output path",
            kind="output",
            path=str(dest),
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


@contextlib.contextmanager
def _export(dest: Path, *, force: bool, want_dir: bool) -> Iterator[Path]:
    dest = Path(dest)
    check_destination(dest, force=force, want_dir=want_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest)

    def before_rename() -> None:
        check_destination(dest, force=force, want_dir=want_dir)
        faults.point("export.before-rename")

    with atomic_write(dest, directory=want_dir, before_rename=before_rename) as staged:
        yield staged.path
        if want_dir:
            faults.point("export.mid-write")  # the folder is written, not yet fsynced nor renamed


def atomic_file(dest: Path, *, force: bool) -> contextlib.AbstractContextManager[Path]:
    """Yield a fresh temporary path to write (not yet created); on success it replaces `dest`,
    on failure it is removed. `dest` is refused if it exists (unless `force`) or is a folder."""
    return _export(dest, force=force, want_dir=False)


def atomic_dir(dest: Path, *, force: bool) -> contextlib.AbstractContextManager[Path]:
    """Yield a fresh temporary folder; on success it becomes `dest` (an old `dest` is removed
    only after the new one is in place), on failure it is removed."""
    return _export(dest, force=force, want_dir=True)


__all__ = [
    "INCOMPLETE_SUFFIX",
    "atomic_dir",
    "atomic_file",
    "check_destination",
    "clean_stale_temporaries",
]
