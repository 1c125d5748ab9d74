"""Name helpers shared by every lookup: shell quoting for hints and "did you mean" suggestions.

No dependencies beyond the standard library (importable from the torch-free paths).
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable

_VALID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # the store's names (store.core.validate_name)


def slugify(text: str) -> str:
    """The store name `text` becomes: 'Van Gogh' -> 'van-gogh' ('' when nothing is left)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-._")
    return re.sub(r"\.{2,}", ".", slug)[:64].strip("-._")


def is_path_like(text: str) -> bool:
    """Whether `text` could steer a path ('/', '\\', '..' or a control character): such a text
    is refused as a name, never turned into one."""
    return any(s in text for s in ("/", "\\", "..")) or any(ord(c) < 32 for c in text)


def lookup_names(text: str) -> list[str]:
    """The stored names a user's `text` may denote, most literal first: the text itself, its
    lowercase, its slug (only valid store names; none for a path-like text)."""
    if is_path_like(text):
        return []
    out: list[str] = []
    for cand in (text, text.strip().lower(), slugify(text)):
        if _VALID.match(cand) and ".." not in cand and cand not in out:
            out.append(cand)
    return out


def quote(name: str) -> str:
    """`name` as one shell word: 'Van Gogh' -> "'Van Gogh'", van-gogh -> van-gogh."""
    return shlex.quote(name)


def close_matches(name: str, candidates: Iterable[str]) -> list[str]:
    """The closest candidates (difflib ratio ≥ 0.6, else those containing or contained in
    `name`), at most three: the data behind a "did you mean" line."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if not close:
        low = name.lower()
        close = [c for c in pool if low and (low in c or c in low)][:3]
    return close


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """'did you mean x?' for the closest candidates (`close_matches`), else None."""
    close = close_matches(name, candidates)
    if not close:
        return None
    return "did you mean " + " or ".join(quote(c) for c in close) + "?"
