"""A closed-form SepME increment: UCE's least squares solved inside SepME's decoupled space.

SepME's increment of every cross-attention to_k / to_v weight W (d_out × d) is

    ΔW = D · S          D = β·C  (d_out × m),   S = null_space(E_k)  (m × d, orthonormal rows)

so every row of ΔW lies in the null space of the preserved prompts' embeddings E_k: keys and
values of every prompt in E_k — the blank prompt, the other concepts, the preserve prompts — are
unchanged *whatever D is* (docs/method.md §2, §3). Separability and exact restore therefore hold by
construction for any choice of D, and D may be chosen by a closed form instead of (or before)
the G-CiRs iterations.

Objective (per layer, float64), with X = e(c) and A = e(anchor) the L × d embeddings of the
concept prompt and of the anchor prompt (the blank prompt by default), rows being tokens:

    min_D  ‖(W + D S) Xᵀ − W Aᵀ‖²_F + λ ‖D S‖²_F

i.e. map the concept's keys/values onto the anchor's (UCE's erasure term), with a ridge λ
keeping the increment small. Write Y = X Sᵀ (L × m: the part of the concept's embedding the
null space can reach) and R = W (A − X)ᵀ (d_out × L: the key/value gap). Because S has
orthonormal rows, ‖D S‖_F = ‖D‖_F and (D S) Xᵀ = D Yᵀ, so the objective is the ridge problem

    min_D ‖D Yᵀ − R‖²_F + λ‖D‖²_F      ⇒      D (Yᵀ Y + λ I_m) = R Y
    D = W · G,      G = (A − X)ᵀ Y (Yᵀ Y + λ I_m)⁻¹        (d × m, the same for every layer)

One m × m solve for the whole UNet, then one product per layer: C = W·G / β. Preserve terms
(UCE's λ_p Σ‖W'c_j − W c_j‖²) are not needed: they are zero for every D by construction.

What it cannot do: the gap is closed only along Y. Directions of X − A inside the span of E_k
(the shared start token, everything the concept has in common with a preserved prompt) stay;
for a concept whose neighbours fill most of E_k the closed form leaves a residual gap, which
`KvGap.left` reports and the G-CiRs iterations that follow (SepME's default) work on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class KvGap:
    """Σ over layers of ‖W Xᵀ − W Aᵀ‖² before and ‖(W+ΔW) Xᵀ − W Aᵀ‖² after; `left` = after/before."""

    before: float
    after: float

    @property
    def left(self) -> float:
        return self.after / self.before if self.before > 0 else 0.0


def closed_form_factor(
    basis: torch.Tensor, emb_concept: torch.Tensor, emb_anchor: torch.Tensor, ridge: float
) -> torch.Tensor:
    """G `[d, m]` float64 with D_ℓ = W_ℓ G for every layer (module docstring). `basis` `[m, d]`
    orthonormal rows; embeddings `[L, d]` (or `[1, L, d]`)."""
    s = basis.detach().to("cpu", torch.float64)
    x = emb_concept.detach().reshape(-1, s.shape[1]).to("cpu", torch.float64)
    a = emb_anchor.detach().reshape(-1, s.shape[1]).to("cpu", torch.float64)
    if x.shape != a.shape:
        raise ValueError(f"concept and anchor embeddings differ in shape: {x.shape} vs {a.shape}")
    y = x @ s.T  # [L, m]
    m = s.shape[0]
    gram = y.T @ y + ridge * torch.eye(m, dtype=torch.float64)
    # G = (A − X)ᵀ Y gram⁻¹; gram is symmetric positive definite (ridge > 0)
    return torch.linalg.solve(gram, ((a - x).T @ y).T).T


def closed_form_coefs(
    layers: list[tuple[str, Any]],
    basis: torch.Tensor,
    emb_concept: torch.Tensor,
    emb_anchor: torch.Tensor,
    ridge: float,
) -> tuple[dict[str, torch.Tensor], KvGap]:
    """`({layer: D_ℓ = W_ℓ G float32 CPU [d_out, m]}, the key/value gap before/after)` for the
    given `(name, Linear)` layers; D already includes β (divide by β for C)."""
    g = closed_form_factor(basis, emb_concept, emb_anchor, ridge)
    s = basis.detach().to("cpu", torch.float64)
    x = emb_concept.detach().reshape(-1, s.shape[1]).to("cpu", torch.float64)
    a = emb_anchor.detach().reshape(-1, s.shape[1]).to("cpu", torch.float64)
    coefs: dict[str, torch.Tensor] = {}
    before = after = 0.0
    for name, module in layers:
        w = module.weight.detach().to("cpu", torch.float64)
        d = w @ g
        coefs[name] = d.float()
        gap = (x - a) @ w.T  # [L, d_out]
        before += float((gap**2).sum())
        after += float(((gap + (x @ s.T) @ d.T) ** 2).sum())
    return coefs, KvGap(before, after)
