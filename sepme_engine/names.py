"""Name helpers shared by every lookup: shell quoting for hints and "did you mean" suggestions.

No dependencies beyond the standard library (importable from the torch-free paths).
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable


def quote(name: str) -> str:
    """`name` as one shell word: 'Van Gogh' -> "'Van Gogh'", van-gogh -> van-gogh."""
    return shlex.quote(name)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """'did you mean x?' for the closest candidates (difflib ratio ≥ 0.6), else None."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if not close:
        low = name.lower()
        close = [c for c in pool if low and (low in c or c in low)][:3]
    if not close:
        return None
    return "did you mean " + " or ".join(quote(c) for c in close) + "?"
