"""The composition rule, stated once: W' = (W_base.float() + D).to(dtype), D = Σ ΔW_i.

- `sum_deltas(increments)`: D per layer, starting from float32 zeros and adding each active
  increment's float32 ΔW in the order given (callers pass them sorted by concept name, the
  canonical order), so every consumer gets the same bits.
- `compose_source(w, d)`: W.float() + D before the final cast (W itself when the layer has no
  delta); the streaming exporters cast it slice by slice.
- `compose_weight(w, d, dtype)`: the composed weight, cast: what `generate`, `inspect`'s
  previews and the in-place merge (`hooks.apply_deltas_inplace`) write into a UNet, and what
  the exporters' bytes equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sepme_engine.delta.increment import Increment
from sepme_engine.errors import BaseMismatch


def sum_deltas(increments_in_order: Sequence[Increment]) -> dict[str, torch.Tensor]:
    """D per layer: zeros + ΔW_1 + ΔW_2 + ... in float32, in the order given (pass the active
    increments sorted by concept name)."""
    total: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for inc in increments_in_order:
        for name, shape in inc.shapes().items():
            if name in shapes and shapes[name] != shape:
                raise BaseMismatch(
                    f"increments disagree on the shape of {name}: {shapes[name]} vs {shape}",
                    hint="all increments of a composition must belong to the same base",
                )
            shapes[name] = shape
            if name not in total:
                total[name] = torch.zeros(shape, dtype=torch.float32)
            total[name] = total[name] + inc.delta(name)
    return dict(sorted(total.items()))


def compose_source(w_base: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """W_base.float() + D (on W_base's device) before the cast to the output dtype; W_base
    itself (no copy) without a delta."""
    if delta is None:
        return w_base
    return w_base.to(torch.float32) + delta.to(w_base.device, torch.float32)


def compose_weight(
    w_base: torch.Tensor, delta: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """(W_base.float() + D).to(out_dtype); without a delta a floating weight is only cast and a
    non-floating buffer keeps its dtype."""
    if delta is None and not w_base.is_floating_point():
        return w_base
    return compose_source(w_base, delta).to(out_dtype)


__all__ = ["compose_source", "compose_weight", "sum_deltas"]
