"""The layers SepME tunes: the cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`).

One definition for the whole engine lives in `sepme_engine.models.arch`; a layer currently
wrapped by `hooks.attach` is returned as the wrapper (an `nn.Linear` sharing the original's
parameters), so names and shapes are the same attached or not.
"""

from __future__ import annotations

from typing import Any

from sepme_engine.models.arch import cross_attention_kv

__all__ = ["cross_attention_kv", "kv_shapes"]


def kv_shapes(unet: Any) -> dict[str, tuple[int, int]]:
    """`{name: (d_out, d_in)}` of the to_k/to_v weights (the shape of each ΔW)."""
    return {name: (m.out_features, m.in_features) for name, m in cross_attention_kv(unet)}
