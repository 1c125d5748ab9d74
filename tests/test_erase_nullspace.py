"""Null space of preserved-prompt embeddings, and the embeddings themselves (models/text.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from sepme_engine.erase.nullspace import DEFAULT_RTOL, null_space
from sepme_engine.errors import InvalidInput, NullSpaceEmpty
from sepme_engine.models.text import check_prompt, encode_prompts, token_count
from tests._tiny import shared_tiny


def numerical_rank(E: torch.Tensor) -> int:
    """E's rank with null_space's tolerance (singular values > rtol·σ_max)."""
    s = torch.linalg.svdvals(E.reshape(-1, E.shape[-1]).double())
    return int((s > DEFAULT_RTOL * s[0]).sum())


def preserve_null_space(pipe, prompts):
    """(S, E) the way SepME builds them: E = the prompts' stacked embeddings."""
    E = encode_prompts(pipe, list(prompts))
    E = E.reshape(-1, E.shape[-1]).float().cpu()
    return null_space(E, prompts=prompts), E


def _assert_null_basis(E: torch.Tensor, S: torch.Tensor, rank: int) -> None:
    E = E.reshape(-1, E.shape[-1]).double()
    d = E.shape[1]
    assert S.shape == (d - rank, d)
    S = S.double()
    # S is float32: rounding it moves S·e by ≤ √d·u32·‖e‖ ≈ 3.4e-7·‖E‖ (d = 32); float64
    # products add nothing visible. 1e-6 is that bound ×3; orthonormality likewise.
    residual = torch.linalg.matrix_norm(E @ S.T, ord=2)
    assert residual <= 1e-6 * torch.linalg.matrix_norm(E, ord=2)
    assert torch.allclose(S @ S.T, torch.eye(S.shape[0], dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("rows,rank", [(5, 5), (20, 7), (40, 31)])
def test_null_space_residual_orthonormal_and_dimension(rows: int, rank: int) -> None:
    g = torch.Generator().manual_seed(rows)
    d = 32
    E = (torch.randn(rows, rank, generator=g) @ torch.randn(rank, d, generator=g)).float()
    S = null_space(E)
    assert S.dtype == torch.float32
    assert numerical_rank(E) == rank
    _assert_null_basis(E, S, rank)
    # A vector in the row space of E is orthogonal to the null space; a null vector is kept.
    assert (S.double() @ E[0].double()).abs().max() <= 1e-6 * E[0].norm()  # √d·u32·‖e‖ ×3


def test_null_space_tolerance_is_relative() -> None:
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    s = torch.tensor([1e3, 1.0, 1e-2] + [1e-5] * 29, dtype=torch.float64)
    E = (torch.diag(s) @ u.T)[:4]  # singular values 1e3, 1, 1e-2, 1e-5
    assert null_space(E, rtol=1e-6).shape[0] == 29  # 1e-5 / 1e3 = 1e-8 <= rtol: treated as zero
    assert null_space(E, rtol=1e-9).shape[0] == 28  # float64 E: rank cut-off, not a tolerance
    assert null_space(E, rtol=1e-4).shape[0] == 30
    assert null_space(E * 1e6, rtol=1e-6).shape[0] == 29  # invariant to scale


def test_null_space_empty_names_prompts() -> None:
    E = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    with pytest.raises(NullSpaceEmpty) as err:
        null_space(E, prompts=["", "Van Gogh"])
    assert "'Van Gogh'" in str(err.value) and "rank 16 of 16" in str(err.value)
    assert err.value.hint


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_encode_prompts_is_exactly_the_pipeline_embedding(arch: str) -> None:
    pipe = shared_tiny(arch, seed=3, max_length=8)
    emb = encode_prompts(pipe, ["a cat", ""])
    assert emb.shape == (2, 8, 32)
    cond, uncond = pipe.encode_prompt(
        "a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    assert torch.equal(emb[0], cond[0])
    assert torch.equal(emb[1], uncond[0])  # the classifier-free-guidance branch


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_preserve_null_space_on_pipeline(arch: str) -> None:
    pipe = shared_tiny(arch, seed=0, max_length=8)
    prompts = ["", "a dog", "a red car"]
    S, E = preserve_null_space(pipe, prompts)
    rank = numerical_rank(E)
    assert 0 < rank < 32
    _assert_null_basis(E, S, rank)
    # Each prompt adds at most L-1 = 7 rows beyond the shared BOS row.
    assert rank <= 8 + 7 + 7


def test_pipeline_null_space_empty_when_prompts_fill_the_space() -> None:
    # L = 77 rows for d = 32; a copy, since the LayerNorm bias is changed below
    pipe = copy.deepcopy(shared_tiny("sd1", seed=0, max_length=77))
    ln = pipe.text_encoder.get_submodule(
        next(n for n, _ in pipe.text_encoder.named_modules() if n.endswith("final_layer_norm"))
    )
    with torch.no_grad():  # a real (non-zero) LayerNorm bias: rows no longer share a null vector
        ln.bias.copy_(torch.randn(ln.bias.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(NullSpaceEmpty, match="''"):
        preserve_null_space(pipe, [""])


def test_check_prompt() -> None:
    pipe = shared_tiny("sd1", seed=0, max_length=8)
    check_prompt(pipe, "a cat")
    with pytest.raises(InvalidInput, match="empty"):
        check_prompt(pipe, "   ")
    long = "one two three four five six seven"
    assert token_count(pipe, long) == 9
    with pytest.raises(InvalidInput, match="9 tokens.*at most 8"):
        check_prompt(pipe, long)
