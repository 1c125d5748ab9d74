"""A small CLIP-BPE tokenizer for the toy world.

The vocabulary is the 256 byte-unicode characters, their "</w>" forms, the merged tokens that
make every toy word a single token, and <|startoftext|>/<|endoftext|> — about 600 tokens instead
of CLIP's 49,408. The merges are the subset of CLIP's own merges that the real CLIP BPE applies to
the toy words, in CLIP's rank order, so every word tokenizes exactly as CLIP's BPE would; words
that CLIP splits (e.g. "cyan" → "cy", "an") get extra chain merges appended at the end. Unknown
words fall back to smaller pieces, down to single characters.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from sepme_engine.models.tokenizer import _bytes_to_unicode, clip_vocab_and_merges
from sepme_engine.toy.world import COLOURS, SHAPES, STYLES

MAX_LENGTH = 8
EXTRA_WORDS: tuple[str, ...] = (
    "a", "an", "the", "on", "of", "and", "with", "in", "no",
    "painting", "image", "photo", "picture", "drawing", "shape", "background", "colour", "color",
)  # fmt: skip
TOY_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(("a", "on") + COLOURS + SHAPES + STYLES + EXTRA_WORDS)
)


def _bpe_trace(word: str, ranks: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """CLIP's BPE on one word; returns (final pieces, merges applied as "a b" strings)."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    used: list[str] = []
    while len(pieces) > 1:
        pairs = [
            (ranks.get((a, b), 1 << 30), i)
            for i, (a, b) in enumerate(zip(pieces, pieces[1:], strict=False))
        ]
        rank, _ = min(pairs)
        if rank == 1 << 30:
            break
        a, b = next((pieces[i], pieces[i + 1]) for r, i in pairs if r == rank)
        used.append(f"{a} {b}")
        out: list[str] = []
        i = 0
        while i < len(pieces):
            if i < len(pieces) - 1 and pieces[i] == a and pieces[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces, used


@lru_cache(maxsize=1)
def toy_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The toy vocabulary (token -> id) and its merge list."""
    _, clip_merges = clip_vocab_and_merges()
    rank_of = {m: i for i, m in enumerate(clip_merges)}
    ranks = {tuple(m.split()): i for i, m in enumerate(clip_merges)}
    used: set[str] = set()
    extra: list[str] = []
    for word in TOY_WORDS:
        pieces, merges = _bpe_trace(word, ranks)  # type: ignore[arg-type]
        used.update(merges)
        acc = pieces[0]
        for p in pieces[1:]:  # chain the remaining pieces left to right
            m = f"{acc} {p}"
            if m not in extra:
                extra.append(m)
            acc += p
    merges = sorted(used, key=rank_of.__getitem__) + [m for m in extra if m not in used]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m.split()) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_toy_tokenizer(dest: Path, max_length: int = MAX_LENGTH) -> Path:
    """Write a transformers CLIPTokenizer folder for the toy vocabulary at `dest`."""
    vocab, merges = toy_vocab_and_merges()
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config: dict[str, Any] = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return dest


def toy_tokenizer(max_length: int = MAX_LENGTH) -> Any:
    """A transformers CLIPTokenizer over the toy vocabulary, built offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="sepme-toytok-") as tmp:
        write_toy_tokenizer(Path(tmp), max_length)
        tok = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    tok.model_max_length = max_length
    return tok


__all__ = [
    "MAX_LENGTH",
    "TOY_WORDS",
    "toy_tokenizer",
    "toy_vocab_and_merges",
    "write_toy_tokenizer",
]
