"""Float tolerances derived from the dtype and the size of the sums (never a bare 1e-10).

A float32 dot product of length k, summed in any order (SIMD lanes, FMA, blocking — whatever
ATEN_CPU_CAPABILITY picks), is within γ_k·Σ|a_i||b_i| of the exact value, γ_k = k·u/(1 − k·u)
with u = eps/2 the unit round-off (Higham, Accuracy and Stability, §3.1). The bounds here are
that worst case, so an assertion built on them holds on every CPU; they are not fitted to one.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2⁻²³ ≈ 1.19e-7
EPS16 = torch.finfo(torch.float16).eps  # 2⁻¹⁰ ≈ 9.8e-4
EPS64 = torch.finfo(torch.float64).eps  # 2⁻⁵² ≈ 2.2e-16


def gamma(k: int, dtype: torch.dtype = torch.float32) -> float:
    """γ_k for `dtype`: the relative bound on a sum of k rounded products."""
    u = torch.finfo(dtype).eps / 2
    return k * u / (1 - k * u)


def matmul_bound(a: torch.Tensor, b: torch.Tensor, extra: int = 0) -> torch.Tensor:
    """Elementwise bound on |fl(a @ b) − a @ b| in a's dtype: γ_{k+extra}·(|a| @ |b|), float64.

    `extra` counts further roundings on top of the k-term sum (a scaling, an add)."""
    k = a.shape[-1] + extra
    return gamma(k, a.dtype) * (a.double().abs() @ b.double().abs())
