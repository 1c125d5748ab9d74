"""Atomic file writes: a temporary file in the destination folder, fsync, os.replace."""

from __future__ import annotations

import contextlib
import json
import os
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


@contextlib.contextmanager
def atomic_open(dest: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary `.<name>.<rand>.incomplete` beside `dest`; on success it replaces `dest`.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `dest` is
    left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".incomplete", dir=dest.parent)
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
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
