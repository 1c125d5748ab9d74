"""Text embeddings exactly as StableDiffusionPipeline feeds them to the UNet.

The decoupling guarantee of SepME (ΔW · e(c)ᵀ = 0) only holds for the exact embedding the
pipeline produces at inference, so this module mirrors `StableDiffusionPipeline.encode_prompt`
with `clip_skip=None`: the full `max_length`-padded token sequence, truncated to the tokenizer
limit, through `text_encoder(...)[0]` (the final hidden states after the final layer norm), with
the attention mask only when the encoder's config asks for one, returned in the text encoder's
dtype. The classifier-free-guidance branch of the pipeline encodes `""` the same way.

Each prompt is encoded on its own (batch 1), like a single-prompt generation; encoding in a
larger batch can differ in float round-off on some kernels.

SDXL (a pipeline with `text_encoder_2`) mirrors `StableDiffusionXLPipeline.encode_prompt` with
`clip_skip=None`: each tokenizer pads to its `max_length` (the first with its eos, the second
with "!"), each encoder runs with `output_hidden_states=True`, and the embedding is the
concatenation on the last axis of both penultimate hidden states (`hidden_states[-2]`; 768 + 1280
= 2048 at full size) — what every to_k/to_v sees, so E_k, the null space and the increments live
there. SDXL's UNet also takes `added_cond_kwargs` (`text_embeds` = the pooled, projected output
of the second encoder, and `time_ids` = (H, W, 0, 0, H, W) at the default resolution, as the
pipeline sends them); sepme never changes the layers that read them. So that the erasure methods
call the UNet the same way for every architecture, `encode_prompts` records each SDXL prompt's
pooled embedding on the pipeline and installs (once) a forward pre-hook on the UNet that fills
in `added_cond_kwargs` for a call without them, looking up each batch row's prompt among the
recorded ones; a row that matches none raises (a call the pipeline makes itself passes its own
`added_cond_kwargs` and is left alone). Prompts are encoded literally, "" included: the pipeline's
zeroed negative embedding (`force_zeros_for_empty_prompt`) is used for its negative branch only.
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


def is_xl(pipe: Any) -> bool:
    """Whether `pipe` is an SDXL pipeline (two text encoders)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def _encode_xl_one(pipe: Any, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [1, L, d1 + d2], pooled [1, p]) as StableDiffusionXLPipeline.encode_prompt."""
    hidden = []
    pooled = None
    pairs = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    for tok, encoder in pairs:
        ids = tok(
            [prompt],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    assert pooled is not None
    enc2 = pipe.text_encoder_2
    emb = torch.cat(hidden, dim=-1).to(dtype=enc2.dtype, device=enc2.device)
    return emb, pooled


class _XLConditioning:
    """The recorded SDXL prompts of one pipeline and the UNet pre-hook that uses them."""

    def __init__(self, pipe: Any) -> None:
        size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        self.time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        self.hidden: list[torch.Tensor] = []  # [L, d] float32, on the encoder's device
        self.pooled: list[torch.Tensor] = []  # [p]

    def record(self, emb: torch.Tensor, pooled: torch.Tensor) -> None:
        row = emb[0].detach().float()
        if not any(h.shape == row.shape and torch.equal(h, row) for h in self.hidden):
            self.hidden.append(row)
            self.pooled.append(pooled[0].detach())

    def lookup(self, ehs: torch.Tensor) -> torch.Tensor:
        """Row b of the result is the pooled embedding of the prompt whose hidden states are
        `ehs[b]` (equal up to the round-off of a cast to the UNet's dtype)."""
        rows = []
        for b in range(ehs.shape[0]):
            x = ehs[b].float()
            dists = [
                float((x - h.to(x.device)).abs().amax()) if h.shape == x.shape else float("inf")
                for h in self.hidden
            ]
            best = min(range(len(dists)), key=dists.__getitem__) if dists else -1
            scale = float(x.abs().amax()) + 1.0
            # a cast to fp16/bf16 moves a value by at most 2**-8 of its magnitude
            if best < 0 or dists[best] > 2**-7 * scale:
                raise InvalidInput(
                    "an SDXL UNet call without added_cond_kwargs got an embedding that "
                    "encode_prompts did not produce",
                    hint="encode prompts with sepme_engine.models.text.encode_prompts, or pass "
                    "added_cond_kwargs (text_embeds, time_ids) yourself",
                )
            rows.append(self.pooled[best].to(ehs.device))
        return torch.stack(rows)

    def hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("added_cond_kwargs") is not None:
            return None
        ehs = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        n = ehs.shape[0]
        kwargs = dict(kwargs)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": self.lookup(ehs).to(ehs.dtype),
            "time_ids": self.time_ids.to(ehs.device, ehs.dtype).repeat(n, 1),
        }
        return args, kwargs


def xl_conditioning(pipe: Any) -> _XLConditioning:
    """The pipeline's SDXL conditioning record, created (and its UNet hook installed) once."""
    cond = getattr(pipe, "_sepme_xl_conditioning", None)
    if cond is None:
        cond = _XLConditioning(pipe)
        pipe.unet.register_forward_pre_hook(cond.hook, with_kwargs=True)
        pipe._sepme_xl_conditioning = cond
    return cond


@torch.no_grad()
def encode_prompts_xl(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: (embeddings [n, L, d1 + d2], pooled [n, p]) of `prompts`, bit-for-bit what
    `pipe.encode_prompt(prompt, do_classifier_free_guidance=False)` gives; each prompt is
    recorded for the UNet's added conditioning (module docstring)."""
    cond = xl_conditioning(pipe)
    embs, pools = [], []
    for prompt in prompts:
        emb, pooled = _encode_xl_one(pipe, prompt)
        cond.record(emb, pooled)
        embs.append(emb)
        pools.append(pooled)
    if not embs:
        enc2 = pipe.text_encoder_2
        width = pipe.text_encoder.config.hidden_size + enc2.config.hidden_size
        length = pipe.tokenizer.model_max_length
        return (
            torch.zeros(0, length, width, dtype=enc2.dtype, device=enc2.device),
            torch.zeros(0, enc2.config.projection_dim, dtype=enc2.dtype, device=enc2.device),
        )
    return torch.cat(embs), torch.cat(pools)


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Embeddings `[n, L, d]` of `prompts` (L = tokenizer.model_max_length), in the text
    encoder's dtype and on its device — bit-for-bit what `pipe.encode_prompt` gives for
    `clip_skip=None` and a single prompt (SDXL: the concatenated hidden states, module docstring)."""
    if is_xl(pipe):
        return encode_prompts_xl(pipe, prompts)[0]
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
        hint="use words the base knows (the toy base knows its 13 concepts), or force the "
        "training anyway",
        kind="unknown-words",
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
