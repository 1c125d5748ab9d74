"""Keep transformers' and diffusers' log warnings out of sepme's output.

sepme checks what they warn about itself (prompt length, vocabulary) and says it in its own
words; their loggers would otherwise print to stderr in the middle of a progress bar.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_NAMES = ("transformers", "diffusers")


@contextlib.contextmanager
def quiet_hf_logs() -> Iterator[None]:
    """Raise the transformers/diffusers loggers to ERROR for the duration (restored after)."""
    loggers = [logging.getLogger(n) for n in _NAMES]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
