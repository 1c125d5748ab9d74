"""The CLIP BPE tokenizer, built offline from the vocabulary file shipped in the package.

`bpe_simple_vocab_16e6.txt.gz` comes from open_clip (MIT, see data/LICENSE.open_clip.txt); it is
the same byte-level BPE that OpenAI CLIP and Stable Diffusion 1.x/2.x use. We rebuild the
`vocab.json`/`merges.txt` pair that transformers' `CLIPTokenizer` reads, exactly as CLIP's
SimpleTokenizer constructs its vocabulary (49,408 tokens).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

_DATA = Path(__file__).parent / "data"
BPE_FILE = _DATA / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and merge list, as SimpleTokenizer builds them."""
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m.split()) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == VOCAB_SIZE
    return {tok: i for i, tok in enumerate(vocab)}, merges


def tokenizer_files(pad_token: str = "<|endoftext|>", max_length: int = 77) -> dict[str, str]:
    """The files of a transformers CLIPTokenizer folder, as text.

    SD 1.x pads with `<|endoftext|>`; SD 2.x (OpenCLIP) pads with `!`.
    """
    vocab, merges = clip_vocab_and_merges()
    config: dict[str, Any] = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "errors": "replace",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def _bpe_merges(tok: Any) -> list[str] | None:
    """The merge list of a loaded CLIP BPE tokenizer (transformers 4.x slow or 5.x), or None."""
    ranks = getattr(tok, "bpe_ranks", None)  # transformers 4.x slow CLIPTokenizer
    if isinstance(ranks, dict) and ranks:
        return [" ".join(pair) for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    model = json.loads(backend.to_str()).get("model", {})
    if model.get("type") != "BPE":
        return None
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def slow_tokenizer_files(tok: Any) -> dict[str, str] | None:
    """The slow `CLIPTokenizer` files (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) of a loaded CLIP tokenizer, which transformers 4.x and 5.x both
    read; None for a tokenizer that is not a CLIP BPE one."""
    if not type(tok).__name__.startswith("CLIPTokenizer"):
        return None
    pad = str(tok.pad_token) if tok.pad_token is not None else "<|endoftext|>"
    max_length = int(tok.model_max_length)
    vocab, merges = clip_vocab_and_merges()
    if tok.get_vocab() == vocab:
        return tokenizer_files(pad, max_length)
    own_merges = _bpe_merges(tok)
    if own_merges is None:
        return None
    files = tokenizer_files(pad, max_length)
    files["vocab.json"] = json.dumps(tok.get_vocab(), ensure_ascii=False)
    files["merges.txt"] = "#version: 0.2\n" + "\n".join(own_merges) + "\n"
    return files


def write_tokenizer_dir(dest: Path, pad_token: str = "<|endoftext|>", max_length: int = 77) -> Path:
    """Write a CLIPTokenizer folder at `dest` (created if needed) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer_files(pad_token, max_length).items():
        (dest / name).write_text(text, encoding="utf-8")
    return dest


def clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77) -> Any:
    """A transformers CLIPTokenizer with the real CLIP vocabulary, built offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="sepme-tok-") as tmp:
        write_tokenizer_dir(Path(tmp), pad_token, max_length)
        tok = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    tok.model_max_length = max_length
    return tok


__all__ = [
    "VOCAB_SIZE",
    "clip_tokenizer",
    "clip_vocab_and_merges",
    "slow_tokenizer_files",
    "tokenizer_files",
    "write_tokenizer_dir",
]
