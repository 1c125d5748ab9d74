"""The layers SepME tunes: the cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

KV_SUFFIXES = (".attn2.to_k", ".attn2.to_v")


def cross_attention_kv(unet: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every cross-attention `to_k` / `to_v` Linear of `unet`, with its diffusers module name.

    Names look like `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`; the list is
    sorted by name (plain string order, which for SD 1.x/2.x equals natural order). A layer
    currently wrapped by `hooks.attach` is returned as the wrapper (it is an `nn.Linear` sharing
    the original's parameters), so names and shapes are the same attached or not.
    """
    from torch import nn

    found = [
        (name, module)
        for name, module in unet.named_modules()
        if name.endswith(KV_SUFFIXES) and isinstance(module, nn.Linear)
    ]
    return sorted(found, key=lambda item: item[0])


def kv_shapes(unet: nn.Module) -> dict[str, tuple[int, int]]:
    """`{name: (d_out, d_in)}` of the to_k/to_v weights (the shape of each ΔW)."""
    return {name: (m.out_features, m.in_features) for name, m in cross_attention_kv(unet)}
