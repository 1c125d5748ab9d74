"""Null space of the preserved prompts' embeddings (docs/method.md §2, the paper's "particular solutions").

For concept k, E_k stacks the full L×d embedding of every prompt its increment must not touch;
S_k is an orthonormal basis (rows) of {s : E_k sᵀ = 0}. Every ΔW = C·β·S_k then satisfies
ΔW·e(p)ᵀ = 0 for each preserved prompt p, up to float round-off.

Tolerance: the SVD runs in float64 on the (exact) float32/16 embedding values. A right singular
direction counts as null when its singular value σ_i ≤ rtol·σ_max (σ_max = ‖E‖₂), so the
residual obeys ‖E Sᵀ‖₂ ≤ rtol·‖E‖₂. The default rtol = 1e-6 sits just above float32
round-off of the embeddings (≈6e-8 relative per value, amplified by the encoder): directions
whose energy is below it are round-off of an exact dependency (e.g. LayerNorm's zero-mean rows)
and the key/value change they allow for a preserved prompt is below float32 resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sepme_engine.errors import NullSpaceEmpty

DEFAULT_RTOL = 1e-6


def _as_rows(E: torch.Tensor) -> torch.Tensor:
    if E.dim() == 3:
        E = E.reshape(-1, E.shape[-1])
    if E.dim() != 2:
        raise ValueError(f"expected a [rows, d] or [n, L, d] tensor, got shape {tuple(E.shape)}")
    return E.detach().to(device="cpu", dtype=torch.float64)


def null_space(
    E: torch.Tensor,
    rtol: float = DEFAULT_RTOL,
    prompts: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Orthonormal basis `[m, d]` (rows, on CPU, `dtype`) of the null space of E.

    E is `[rows, d]` or `[n, L, d]`. m = d − rank(E) with rank counted as singular values
    > rtol·σ_max (see module docstring). Raises NullSpaceEmpty when m = 0, naming `prompts`
    when given.
    """
    E64 = _as_rows(E)
    rows, d = E64.shape
    if rows == 0:
        return torch.eye(d, dtype=dtype)
    # Full V only when rows < d (then Vh of the thin SVD would miss the null directions).
    _, s, vh = torch.linalg.svd(E64, full_matrices=rows < d)
    rank = 0 if float(s[0]) == 0.0 else int((s > rtol * s[0]).sum())
    basis = vh[rank:]
    if basis.shape[0] == 0:
        named = ", ".join(repr(p) for p in prompts) if prompts is not None else "the given rows"
        raise NullSpaceEmpty(
            f"the preserved prompts fill the text-embedding space (rank {rank} of {d}): "
            f"no direction is left for an increment that leaves {named} unchanged",
            hint="preserve fewer prompts (each adds up to L-1 to the rank), "
            "or erase this concept with fewer concepts held fixed",
        )
    return basis.to(dtype).contiguous()
