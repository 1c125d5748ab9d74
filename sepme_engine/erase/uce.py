"""UCE: Unified Concept Editing, closed-form erasure.

R. Gandikota, H. Orgad, Y. Belinkov, J. Materzyńska, D. Bau, "Unified Concept Editing in
Diffusion Models", WACV 2024. Each cross-attention to_k / to_v weight W is replaced by the
minimiser of

    Σ_i ‖W' c_i − v*_i‖² + λ_p Σ_j ‖W' c_j − W c_j‖² + ε ‖W' − W‖²_F

    c_i  : rows of the erased prompt's embedding e(c)          v*_i = W · (the same row of e(""))
    c_j  : rows of the preserved prompts' embeddings ("" is always one of them)

i.e. the concept's keys/values are mapped to the blank prompt's, the preserved prompts' keys and
values are kept, and ε is a small ridge toward the original W. The solution is

    W' = (Σ_i v*_i c_iᵀ + λ_p Σ_j W c_j c_jᵀ + ε W) (Σ_i c_i c_iᵀ + λ_p Σ_j c_j c_jᵀ + ε I)⁻¹

(the paper's formula; the ε terms are those of the reference code, which adds `lamb·W` and
`lamb·I`; an ε·I without the ε·W would pull W' toward 0 in every direction no embedding spans).
It is computed as the increment directly, for all layers with one shared factor:

    ΔW = W' − W = W · Aᵀ B,    A = E_∅ − C   [n, d],   B = C M⁻¹   [n, d],
    M  = CᵀC + λ_p C_pᵀC_p + ε I

(C: the erased rows, E_∅: the blank prompt's rows at the same positions, C_p: the preserved
rows), in float64 on the CPU, stored float32. No UNet pass.

Which rows (`UceConfig.positions`): "all" (default) uses the full L×d padded embedding, position
by position — with a causal text encoder every row after the concept's tokens (EOS and the
padding) carries the concept, so this is the strongest mapping; "concept" uses only positions
1..n−1 (the concept's tokens and its EOS). The reference code aligns the concept's last token
with the blank prompt's first; mapping by position keeps BOS → BOS consistent with the preserved
"". `final_loss` is the fraction of the erase gap left, Σ_ℓ Σ_i ‖W'c_i − v*_i‖² /
Σ_ℓ Σ_i ‖W c_i − v*_i‖² (0 = the concept's keys/values are exactly the blank prompt's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from sepme_engine.delta.increment import Increment
from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.erase.common import MethodResult, MethodStep, concept_positions, provenance
from sepme_engine.erase.sepme import preserve_set
from sepme_engine.errors import InvalidInput
from sepme_engine.models.text import check_prompt, encode_prompts

NAME = METHOD = "uce"


@dataclass(frozen=True)
class UceConfig:
    """UCE hyper-parameters. `ridge` is ε (the reference code's `lamb`, 0.1)."""

    preserve_scale: float = 1.0  # λ_p
    ridge: float = 0.1  # ε
    positions: Literal["all", "concept"] = "all"

    def __post_init__(self) -> None:
        if not self.preserve_scale >= 0:
            raise InvalidInput(f"UCE preserve_scale must be >= 0, got {self.preserve_scale}")
        if not self.ridge > 0:
            raise InvalidInput(f"UCE ridge must be > 0, got {self.ridge}")
        if self.positions not in ("all", "concept"):
            raise InvalidInput(f"UCE positions must be 'all' or 'concept', got {self.positions!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def uce_factors(
    erase_rows: torch.Tensor,
    blank_rows: torch.Tensor,
    preserve_rows: torch.Tensor,
    preserve_scale: float,
    ridge: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(A, B)` float64 with ΔW = W · Aᵀ B for every layer (see module doc). Rows are `[n, d]`."""
    c = erase_rows.double()
    p = preserve_rows.double()
    d = c.shape[1]
    m = c.T @ c + preserve_scale * (p.T @ p) + ridge * torch.eye(d, dtype=torch.float64)
    b = torch.linalg.solve(m, c.T).T  # C M⁻¹ (M symmetric)
    return blank_rows.double() - c, b


def train_uce(
    pipe: Any,
    prompt: str,
    preserve_prompts: Sequence[str],
    config: UceConfig,
    device: str | torch.device,
) -> MethodResult:
    """Erase `prompt` with UCE's closed form; return the dense increment (the pipe is left
    unchanged). `preserve_prompts`: prompts whose keys/values should stay ("" is always added;
    the concept itself may not be one). `device`: where `pipe` is (used only for encoding; the
    solve runs in float64 on the CPU). Raises InvalidInput.
    """
    start = time.perf_counter()
    device = torch.device(device)
    if pipe.unet.device.type != device.type:
        raise InvalidInput(f"the pipeline is on {pipe.unet.device}, not on {device}")
    check_prompt(pipe, prompt)
    preserve = preserve_set(prompt, preserve_prompts)
    for p in preserve[1:]:
        check_prompt(pipe, p)

    emb = encode_prompts(pipe, [prompt, *preserve]).to("cpu", torch.float64)  # [1+P, L, d]
    e_c, e_blank = emb[0], emb[1]  # preserve[0] is ""
    if config.positions == "all":
        rows = list(range(e_c.shape[0]))
    else:
        tokens = concept_positions(pipe, prompt)
        rows = [*tokens, tokens[-1] + 1]  # the concept's tokens and its EOS
    c_rows, blank_rows = e_c[rows], e_blank[rows]
    preserve_rows = emb[1:].reshape(-1, emb.shape[-1])
    a, b = uce_factors(c_rows, blank_rows, preserve_rows, config.preserve_scale, config.ridge)

    deltas: dict[str, torch.Tensor] = {}
    gap_before = 0.0
    gap_after = 0.0
    for name, module in cross_attention_kv(pipe.unet):
        w = module.weight.detach().to("cpu", torch.float64)
        delta = (w @ a.T) @ b
        deltas[name] = delta.float()
        target = blank_rows @ w.T
        gap_before += float(((c_rows @ w.T - target) ** 2).sum())
        gap_after += float(((c_rows @ (w + delta).T - target) ** 2).sum())
    if not deltas:
        raise InvalidInput("the UNet has no cross-attention to_k/to_v layers")
    gap_left = gap_after / gap_before if gap_before > 0 else 0.0

    meta = {
        **provenance(NAME, config, preserve),
        "sepme.prompt": prompt,
        "sepme.rows": json.dumps(rows),
        "sepme.stop_reason": "closed-form",
        "sepme.final_loss": repr(gap_left),
    }
    return MethodResult(
        increment=Increment.dense(deltas, meta),
        iterations=0,
        stop_reason="closed-form",
        unet_passes_training=0,
        wall_s=time.perf_counter() - start,
        final_loss=gap_left,
        loss_history=[gap_left],
        stats={"final_loss": gap_left},
    )


# --- the method as `sepme erase` runs it (erase/__init__.py) -------------------------------------

Config = UceConfig
Step = MethodStep  # never emitted: a closed form
WORDS: Mapping[str, str] = {}
SET_BY_RUN: tuple[str, ...] = ()
TRAINING_DATA = False
KEEPS_PRESERVE = True


def defaults(arch: str, erase: Mapping[str, Any]) -> dict[str, Any]:
    """The reference code's settings (the Config's defaults) on every base."""
    del arch, erase
    return {}


def train(
    pipe: Any,
    prompt: str,
    preserve_prompts: Sequence[str],
    latents: torch.Tensor | None,
    config: UceConfig,
    device: str | torch.device,
    progress: Callable[[MethodStep], None] | None = None,
) -> MethodResult:
    del latents, progress
    return train_uce(pipe, prompt, preserve_prompts, config, device)
