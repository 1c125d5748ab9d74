"""Text embeddings exactly as StableDiffusionPipeline feeds them to the UNet.

The decoupling guarantee of SepME (ΔW · e(c)ᵀ = 0) only holds for the exact embedding the
pipeline produces at inference, so this module mirrors `StableDiffusionPipeline.encode_prompt`
with `clip_skip=None`: the full `max_length`-padded token sequence, truncated to the tokenizer
limit, through `text_encoder(...)[0]` (the final hidden states after the final layer norm), with
the attention mask only when the encoder's config asks for one, returned in the text encoder's
dtype. The classifier-free-guidance branch of the pipeline encodes `""` the same way.

Each prompt is encoded on its own (batch 1), like a single-prompt generation; encoding in a
larger batch can differ in float round-off on some kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sepme_engine.errors import InvalidInput


def _tokenize(pipe: Any, prompts: list[str]) -> Any:
    tok = pipe.tokenizer
    return tok(
        prompts,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Embeddings `[n, L, d]` of `prompts` (L = tokenizer.model_max_length), in the text
    encoder's dtype and on its device — bit-for-bit what `pipe.encode_prompt` gives for
    `clip_skip=None` and a single prompt."""
    encoder = pipe.text_encoder
    device = encoder.device
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
    out = []
    for prompt in prompts:
        inputs = _tokenize(pipe, [prompt])
        mask = inputs.attention_mask.to(device) if use_mask else None
        emb = encoder(inputs.input_ids.to(device), attention_mask=mask)[0]
        out.append(emb.to(dtype=encoder.dtype, device=device))
    if not out:
        length = pipe.tokenizer.model_max_length
        width = encoder.config.hidden_size
        return torch.zeros(0, length, width, dtype=encoder.dtype, device=device)
    return torch.cat(out, dim=0)


def token_count(pipe: Any, prompt: str) -> int:
    """Number of tokens of `prompt` including the start and end tokens, before truncation
    (without transformers' "sequence length is longer than…" log line: the caller decides)."""
    from sepme_engine._hflog import quiet_hf_logs

    with quiet_hf_logs():
        return len(pipe.tokenizer(prompt, truncation=False).input_ids)


def spelled_out_words(tokenizer: Any, prompt: str) -> list[tuple[str, list[str]]]:
    """The words of `prompt` the tokenizer does not know: it falls back to spelling them out,
    at least half of their pieces single characters ('van' -> v, an on the toy base; CLIP knows
    'van' and 'gogh' as whole words). Returns (word, pieces) for each."""
    unk = getattr(tokenizer, "unk_token", None)
    found: list[tuple[str, list[str]]] = []
    for word in prompt.split():
        pieces = [str(p) for p in tokenizer.tokenize(word)]
        bare = [p.removesuffix("</w>") for p in pieces]
        singles = sum(len(b) == 1 for b in bare)
        is_unk = unk is not None and unk != getattr(tokenizer, "eos_token", None) and unk in pieces
        if is_unk or (len(pieces) > 1 and 2 * singles >= len(pieces)):
            found.append((word, pieces))
    return found


def check_vocabulary(pipe: Any, prompt: str, *, force: bool = False) -> None:
    """Refuse (InvalidInput) a concept prompt with words the base's tokenizer does not know —
    training on their character pieces erases nothing useful — unless `force`."""
    unknown = spelled_out_words(pipe.tokenizer, prompt)
    if not unknown or force:
        return
    shown = "; ".join(f"{w!r} -> {' '.join(p)}" for w, p in unknown)
    raise InvalidInput(
        f"the base's tokenizer does not know {', '.join(repr(w) for w, _ in unknown)} in "
        f"{prompt!r}: it spells them out ({shown}), so there is no concept to erase",
        hint="use words the base knows (the toy base knows its 13 concepts), or pass --force "
        "to train anyway",
    )


def check_prompt(pipe: Any, prompt: str) -> None:
    """Raise InvalidInput for an empty prompt or one longer than the tokenizer limit."""
    if not prompt.strip():
        raise InvalidInput(
            "the prompt is empty",
            hint="give the concept as a non-empty prompt, e.g. 'Van Gogh'",
        )
    limit = int(pipe.tokenizer.model_max_length)
    count = token_count(pipe, prompt)
    if count > limit:
        raise InvalidInput(
            f"the prompt {prompt!r} is {count} tokens long (with start/end tokens); "
            f"the text encoder takes at most {limit}",
            hint="shorten the prompt: the pipeline would truncate it, so its tail is never seen",
        )
