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

In context (`contexts`: a pool of captions; the toy profile's are its 139 training captions).
A concept is rarely prompted bare, and a causal text encoder gives its token — and every token
after it — another embedding in "a red cross on stripes" than in "cross". For a concept whose
neighbours fill most of E_k (toy: cross, 2.4 % of its bare embedding outside span(E_k), 4 % in
context) the bare closed form leaves full prompts at the base's rate. With a pool:

* erase rows: besides the bare prompt, every caption q naming the concept, mapped onto q with
  the concept replaced by the anchor ("a red on stripes"); rows where the two agree (the prefix
  before the concept: the same tokens under a causal encoder) are dropped;
* hold rows: every caption not naming the concept, Y_h = X_h Sᵀ, kept near unchanged with weight
  λ_h (`hold`) — UCE's preserve term, soft, for what E_k does not hold exactly;
* push η (`push`): the target is the anchor's keys/values moved past it, away from the concept's,
  W A + η W (A − X). Mapping onto the anchor alone brings a concept back to the base's prior for
  an unnamed concept — for the toy's cross that prior *is* mostly cross (51 % of blank-prompt
  samples) — so erasing it needs the push that SepME's iterations get from τ < 0.

    D (Yᵀ Y + λ_h Y_hᵀ Y_h + λ I) = (1 + η) R Y

Still one m × m solve and D·S rows in the null space of E_k: separability is unchanged.
`neighbours` names the preserve prompts interchangeable with the concept in the pool
(toy: the other shapes for a shape): when E_k leaves the concept almost no room
(`CROWDED`), SepME holds those softly (hold rows) instead of exactly (erase/run.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


# E_k leaves the concept "crowded" when less than this fraction of its bare embedding's norm lies
# outside span(E_k) (toy base: cross 0.024; triangle 0.056, circle 0.106 are erased without help)
CROWDED = 0.05


def mentions(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words (case-insensitive)."""
    words = phrase.strip()
    if not words:
        return False
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text, re.IGNORECASE) is not None


def _replace(text: str, phrase: str, by: str) -> str:
    pattern = rf"(?<!\w){re.escape(phrase.strip())}(?!\w)"
    return " ".join(re.sub(pattern, by, text, flags=re.IGNORECASE).split())


def context_rows(
    prompt: str, contexts: Sequence[str], anchor: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """`([(caption naming the concept, the same caption with the anchor instead)], [captions not
    naming it])` from the pool `contexts` (the bare prompt itself is left out of both)."""
    pairs, holds = [], []
    for q in dict.fromkeys(contexts):
        if q.strip() == prompt.strip() or not q.strip():
            continue
        if mentions(q, prompt):
            pairs.append((q, _replace(q, prompt, anchor)))
        else:
            holds.append(q)
    return pairs, holds


def neighbours(prompt: str, candidates: Sequence[str], contexts: Sequence[str]) -> list[str]:
    """The candidates interchangeable with `prompt` in the pool: some caption naming the concept
    is still a caption of the pool with the candidate in its place (toy: a shape's other
    shapes, "a red cross on stripes" → "a red circle on stripes")."""
    pool = {" ".join(q.lower().split()) for q in contexts}
    naming = [q for q in contexts if mentions(q, prompt)]
    return [
        c
        for c in candidates
        if c.strip() and any(_replace(q, prompt, c).lower() in pool for q in naming if q != prompt)
    ]


def _rows64(basis: torch.Tensor, *embs: torch.Tensor) -> list[torch.Tensor]:
    """`[basis, *embs]` as float64 CPU tensors, each embedding flattened to `[rows, d]`."""
    s = basis.detach().to("cpu", torch.float64)
    return [s, *(e.detach().reshape(-1, s.shape[1]).to("cpu", torch.float64) for e in embs)]


def closed_form_factor(
    basis: torch.Tensor,
    emb_concept: torch.Tensor,
    emb_anchor: torch.Tensor,
    ridge: float,
    push: float = 0.0,
    emb_hold: torch.Tensor | None = None,
    hold: float = 0.0,
) -> torch.Tensor:
    """G `[d, m]` float64 with D_ℓ = W_ℓ G for every layer (module docstring). `basis` `[m, d]`
    orthonormal rows; embeddings `[rows, d]` (or `[n, L, d]`), concept and anchor row for row;
    `emb_hold` the hold rows, weighted `hold`; `push` η."""
    s, x, a = _rows64(basis, emb_concept, emb_anchor)
    if x.shape != a.shape:
        raise ValueError(f"concept and anchor embeddings differ in shape: {x.shape} vs {a.shape}")
    y = x @ s.T  # [rows, m]
    m = s.shape[0]
    gram = y.T @ y + ridge * torch.eye(m, dtype=torch.float64)
    if emb_hold is not None and hold > 0:
        yh = _rows64(basis, emb_hold)[1] @ s.T
        gram = gram + hold * (yh.T @ yh)
    # G = (1 + η) (A − X)ᵀ Y gram⁻¹; gram is symmetric positive definite (ridge > 0)
    g = torch.linalg.solve(gram, ((a - x).T @ y).T).T
    return g if push == 0 else (1.0 + push) * g


def closed_form_coefs(
    layers: list[tuple[str, Any]],
    basis: torch.Tensor,
    emb_concept: torch.Tensor,
    emb_anchor: torch.Tensor,
    ridge: float,
    push: float = 0.0,
    emb_hold: torch.Tensor | None = None,
    hold: float = 0.0,
) -> tuple[dict[str, torch.Tensor], KvGap]:
    """`({layer: D_ℓ = W_ℓ G float32 CPU [d_out, m]}, the key/value gap to the anchor before/
    after)` for the given `(name, Linear)` layers; D already includes β (divide by β for C)."""
    g = closed_form_factor(basis, emb_concept, emb_anchor, ridge, push, emb_hold, hold)
    s, x, a = _rows64(basis, emb_concept, emb_anchor)
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
