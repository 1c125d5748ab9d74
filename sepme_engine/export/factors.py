"""Sum increments (sepme_engine.erase.increment.Increment) into per-layer deltas.

An increment is factored (ΔW_ℓ = coefs[ℓ] @ basis, coefs already × β, basis [m, d_in] shared by
its layers) or dense (ΔW_ℓ given). Layers are keyed by UNet module name
(`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sepme_engine.erase.increment import Increment


def compose_deltas(increments: Iterable[Increment]) -> dict[str, torch.Tensor]:
    """Σ_i ΔW_i per layer, float32: each ΔW_i from `Increment.delta` (float64 product rounded
    once), added in the order given (sort canonically first). Fresh tensors, inputs untouched."""
    out: dict[str, torch.Tensor] = {}
    for inc in increments:
        for layer in inc.layer_names():
            d = inc.delta(layer)
            if layer in out:
                out[layer].add_(d)
            else:
                out[layer] = d.clone()
    return out
