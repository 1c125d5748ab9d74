"""Atomic file writes: a temporary file in the destination folder, fsync, os.replace."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    fd, tmp = tempfile.mkstemp(
        prefix=f".{dest.name}.{os.getpid()}.", suffix=".incomplete", dir=dest.parent
    )
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("manifest.before-rename")
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
        faults.point("manifest.after-rename")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_open(dest, "wb") as fh:
        fh.write(data)


def write_json(dest: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes(dest, text.encode("utf-8"))
