"""Fault injection for the reliability suite (tests/faults, benchmarks/faults.py).

`SEPME_FAULT_KILL_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th time (default the
first) it reaches the named point of a write path, so a test can check what a crash at exactly
that step leaves behind. Unset (always, for users) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "blob.before-rename",  # a blob's .incomplete is written, not yet renamed into blobs/
    "manifest.before-rename",  # a manifest's temporary is written, not yet renamed
    "manifest.after-rename",
    "increment.after-blob",  # erase: blob stored, manifest not yet written
    "increment.after-manifest",  # erase: manifest written, composition not yet updated
    "base.after-blobs",  # base add: files stored, manifest not yet written
    "base-rm.mid",  # base rm: some manifests removed
    "export.before-rename",  # export: the temporary file/folder is complete, not yet renamed
    "export.mid-write",  # export: the temporary file/folder is partly written
    "prune.mid",
)
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Die here (SIGKILL, no clean-up) if SEPME_FAULT_KILL_AT names this point."""
    spec = os.environ.get("SEPME_FAULT_KILL_AT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
