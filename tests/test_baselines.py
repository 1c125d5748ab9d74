"""The baseline erasure methods (ESD-x, FMN, UCE) on tiny seeded pipelines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.increment import Increment
from sepme_engine.delta.layers import cross_attention_kv, kv_shapes
from sepme_engine.erase.esd import EsdConfig, train_esd
from sepme_engine.erase.fmn import FmnConfig, recording_mass, train_fmn
from sepme_engine.erase.uce import UceConfig, train_uce
from sepme_engine.errors import InvalidInput, TrainingDiverged
from sepme_engine.models.text import encode_prompts
from tests._tiny import shared_tiny
from tests._tol import gamma

PROMPT = "Van Gogh"


@pytest.fixture(scope="module")
def pipe() -> Iterator[Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield shared_tiny("sd1", seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(4, 4, 16, 16, generator=g), torch.tensor([50, 300, 600, 900])


class PassCounter:
    """Counts UNet evaluations per batch entry, like data.generate_training_latents."""

    def __init__(self, unet: Any) -> None:
        self.passes = 0
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.passes += int((args[0] if args else kwargs["sample"]).shape[0])


def unet_state(pipe: Any) -> dict[str, Any]:
    return {
        "weights": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
        "grad": [p.requires_grad for p in pipe.unet.parameters()],
        "training": pipe.unet.training,
    }


def assert_pipe_untouched(pipe: Any, before: dict[str, Any]) -> None:
    after = pipe.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before["weights"].items())
    assert [p.requires_grad for p in pipe.unet.parameters()] == before["grad"]
    assert pipe.unet.training == before["training"]
    assert not hooks.delta_layers(pipe.unet)
    procs = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert procs == {"AttnProcessor2_0"}


def assert_dense_increment(pipe: Any, inc: Increment, method: str) -> None:
    assert inc.kind == "dense"
    assert inc.shapes() == kv_shapes(pipe.unet)
    assert len(inc.layer_names()) == 8  # tiny UNet: 4 attn2 modules, to_k and to_v each
    for name, d in inc.deltas.items():
        assert d.dtype == torch.float32 and bool(torch.isfinite(d).all()), name
    assert any(float(d.abs().max()) > 0 for d in inc.deltas.values())
    assert inc.meta["sepme.method"] == method
    assert inc.meta["sepme.prompt"] == PROMPT


def esd_loss(pipe: Any, inc: Increment | None, eta: float = 1.0) -> float:
    """The ESD objective on the fixed batch, for the base plus `inc`."""
    unet = pipe.unet
    x_t, t = fixed_batch()
    emb = encode_prompts(pipe, [PROMPT, ""])
    e_c, e_u = (e.expand(x_t.shape[0], -1, -1) for e in emb.split(1))
    with torch.no_grad():
        eps_c, eps_u = (unet(x_t, t, encoder_hidden_states=e).sample for e in (e_c, e_u))
        target = eps_u - eta * (eps_c - eps_u)
        with hooks.attached(unet, [inc] if inc else []):
            tuned = unet(x_t, t, encoder_hidden_states=e_c).sample
    return float(torch.nn.functional.mse_loss(tuned, target))


# ----- ESD-x ---------------------------------------------------------------------------------------
def test_esd_moves_concept_prediction_to_negative_guidance_target(pipe: Any, latents: Any) -> None:
    before = unet_state(pipe)
    counter = PassCounter(pipe.unet)
    steps = []
    try:
        config = EsdConfig(steps=8, lr=1e-3, batch_size=2, seed=0)
        result = train_esd(pipe, PROMPT, latents, config, "cpu", progress=steps.append)
    finally:
        counter.handle.remove()
    assert_pipe_untouched(pipe, before)
    assert_dense_increment(pipe, result.increment, "esd-x")
    assert (result.iterations, result.stop_reason) == (8, "cap")
    assert result.unet_passes_training == counter.passes == 3 * 2 * 8
    assert len(result.loss_history) == 8 and result.final_loss == result.loss_history[-1]
    assert [s.iteration for s in steps] == list(range(8))
    base, tuned = esd_loss(pipe, None), esd_loss(pipe, result.increment)
    assert tuned < 0.7 * base, (base, tuned)


def test_esd_is_deterministic_for_a_seed(pipe: Any, latents: Any) -> None:
    runs = [
        train_esd(pipe, PROMPT, latents, EsdConfig(steps=3, lr=1e-3, seed=s), "cpu")
        for s in (7, 7, 8)
    ]
    a, b, c = (r.increment for r in runs)
    assert all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.layer_names())
    assert runs[0].loss_history == runs[1].loss_history
    assert not all(torch.equal(a.deltas[k], c.deltas[k]) for k in a.layer_names())


def test_esd_rejects_non_finite_loss(pipe: Any, latents: Any) -> None:
    bad = latents.clone()
    bad[:] = float("nan")
    before = unet_state(pipe)
    with pytest.raises(TrainingDiverged):
        train_esd(pipe, PROMPT, bad, EsdConfig(steps=2), "cpu")
    assert_pipe_untouched(pipe, before)


# ----- FMN ---------------------------------------------------------------------------------------
@torch.no_grad()
def concept_attention_mass(
    pipe: Any, prompt: str, x_t: torch.Tensor, t: torch.Tensor, increments: Any = ()
) -> float:
    """The FMN loss (mean cross-attention mass on `prompt`'s tokens) of the base UNet plus
    `increments` at `x_t`, `t` (one UNet pass)."""
    from sepme_engine.delta import hooks
    from sepme_engine.erase.common import concept_positions

    unet = pipe.unet
    e_c = encode_prompts(pipe, [prompt]).expand(x_t.shape[0], -1, -1)
    with (
        hooks.attached(unet, increments),
        recording_mass(unet, concept_positions(pipe, prompt)) as rec,
    ):
        unet(x_t, t, encoder_hidden_states=e_c)
    return float(torch.stack(rec.masses).mean())


def test_fmn_lowers_attention_mass_on_concept_tokens(pipe: Any, latents: Any) -> None:
    before = unet_state(pipe)
    counter = PassCounter(pipe.unet)
    try:
        result = train_fmn(pipe, PROMPT, latents, FmnConfig(steps=10, lr=1e-2), "cpu")
    finally:
        counter.handle.remove()
    assert_pipe_untouched(pipe, before)
    inc = result.increment
    assert_dense_increment(pipe, inc, "fmn")
    assert inc.meta["sepme.concept_positions"] == "[1, 2]"  # "van", "gogh"
    assert result.unet_passes_training == counter.passes == 10
    assert (result.iterations, result.stop_reason) == (10, "cap")
    x_t, t = fixed_batch()
    base = concept_attention_mass(pipe, PROMPT, x_t, t)
    tuned = concept_attention_mass(pipe, PROMPT, x_t, t, [inc])
    assert 0 < tuned < 0.8 * base, (base, tuned)
    assert result.loss_history[-1] < result.loss_history[0]


def test_fmn_processor_is_a_drop_in_and_mass_is_a_probability(pipe: Any) -> None:
    x_t, t = fixed_batch()
    e = encode_prompts(pipe, [PROMPT]).expand(4, -1, -1)
    with torch.no_grad():
        ref = pipe.unet(x_t, t, encoder_hidden_states=e).sample
        with recording_mass(pipe.unet, range(77)) as rec:
            out = pipe.unet(x_t, t, encoder_hidden_states=e).sample
    # Two float32 attention paths (fused SDPA vs explicit softmax) through ~10 layers: per layer
    # γ_K round-off with K ≤ 77 keys/32 channels (≈ 6e-6), compounded over the depth ≈ 1e-4
    # relative to the output's scale; atol scaled by it, not a fixed figure.
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert len(rec.masses) == 4  # one per attn2 module
    # all positions: mass 1; a float32 sum of 77 softmax weights is within γ_77 ≈ 4.6e-6 of it
    torch.testing.assert_close(torch.stack(rec.masses), torch.ones(4), rtol=0, atol=gamma(77))


def test_fmn_is_deterministic(pipe: Any, latents: Any) -> None:
    a, b = (
        train_fmn(pipe, PROMPT, latents, FmnConfig(steps=2, lr=1e-2, seed=3), "cpu").increment
        for _ in range(2)
    )
    assert all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.layer_names())


# ----- UCE ---------------------------------------------------------------------------------------
def kv_change(pipe: Any, inc: Increment, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: max over layers of ‖ΔW e‖/‖W e‖, and of ‖W' e − W e("")‖/‖W e − W e("")‖."""
    e = encode_prompts(pipe, ["", *prompts]).double()
    rel, gap = [], []
    for name, module in cross_attention_kv(pipe.unet):
        w = module.weight.detach().double()
        d = inc.deltas[name].double()
        base, new, blank = e[1:] @ w.T, e[1:] @ (w + d).T, e[:1] @ w.T
        rel.append((new - base).norm(dim=(1, 2)) / base.norm(dim=(1, 2)))
        gap.append((new - blank).norm(dim=(1, 2)) / (base - blank).norm(dim=(1, 2)))
    return torch.stack(rel).amax(0), torch.stack(gap).amax(0)


def test_uce_closed_form_maps_concept_to_blank_and_keeps_preserved() -> None:
    # L = 8 tokens, d = 32: erased + preserved rows (8 + 2·8 − shared BOS) fit in d, so the
    # closed form can meet every constraint; a tiny ridge makes it (almost) exact.
    small = shared_tiny("sd1", seed=0, max_length=8)
    counter = PassCounter(small.unet)
    config = UceConfig(ridge=1e-8)
    result = train_uce(small, PROMPT, ["a cat"], config, "cpu")
    counter.handle.remove()
    assert counter.passes == result.unet_passes_training == 0
    assert (result.iterations, result.stop_reason) == (0, "closed-form")
    inc = result.increment
    assert_dense_increment(small, inc, "uce")
    assert inc.meta["sepme.preserve_prompts"] == '["", "a cat"]'
    rel, gap = kv_change(small, inc, [PROMPT, "a cat", "", "a dog"])
    # Bounds: the ridge (1e-8) biases the solution by ~ridge/σ_min² ≲ 1e-6, and storing ΔW in
    # float32 moves W'e by ≤ eps32·‖ΔW‖‖e‖ ≈ 1e-7 relative; 1e-4 is far above both, far below
    # the effect (> 1e-2, asserted for the unprotected prompt).
    assert gap[0] < 1e-4  # W' e(c) = W e("") row by row
    assert rel[1] < 1e-4 and rel[2] < 1e-4  # preserved keys/values unchanged
    assert rel[3] > 1e-2  # an unrelated prompt is not protected by construction
    assert result.final_loss < 1e-8  # float64 residual of a (nearly) exactly solvable system


def test_uce_full_length_solves_the_normal_equations(pipe: Any) -> None:
    config = UceConfig()  # λ_p = 1, ε = 0.1, all 77 rows: over-determined in d = 32
    result = train_uce(pipe, PROMPT, ["a cat"], config, "cpu")
    e = encode_prompts(pipe, [PROMPT, "", "a cat"]).double()
    c, blank, keep = e[0], e[1], e[1:].reshape(-1, e.shape[-1])
    for name, module in cross_attention_kv(pipe.unet):
        w = module.weight.detach().double()
        w2 = w + result.increment.deltas[name].double()
        # gradient of Σ‖W'c − W e∅‖² + λ_p Σ‖(W' − W)c_j‖² + ε‖W' − W‖² at W' must vanish
        grad = (w2 @ c.T - w @ blank.T) @ c + (w2 - w) @ keep.T @ keep + 0.1 * (w2 - w)
        scale = (w @ c.T - w @ blank.T).abs().max() * c.abs().max()
        # the solution is stored in float32: the gradient at it is ≈ eps32·cond ≲ 1e-5 of scale
        assert float(grad.abs().max() / scale) < 1e-4, name
    rel, gap = kv_change(pipe, result.increment, [PROMPT, "", "a cat"])
    assert gap[0] < 0.5  # most of the gap to the blank prompt is closed
    assert rel[1] < 0.06 and rel[2] < 0.06  # preserved prompts change little
    assert 0 < result.final_loss < 0.05
    again = train_uce(pipe, PROMPT, ["a cat"], config, "cpu").increment
    assert all(torch.equal(again.deltas[k], result.increment.deltas[k]) for k in again.deltas)


def test_uce_rejects_bad_input(pipe: Any) -> None:
    with pytest.raises(InvalidInput):
        train_uce(pipe, PROMPT, [PROMPT], UceConfig(), "cpu")
    with pytest.raises(InvalidInput):
        train_uce(pipe, "  ", [], UceConfig(), "cpu")
    with pytest.raises(InvalidInput):
        UceConfig(ridge=0)


def test_baseline_increment_round_trips_through_disk(pipe: Any, tmp_path: Any) -> None:
    inc = train_uce(pipe, PROMPT, [], UceConfig(positions="concept"), "cpu").increment
    assert inc.meta["sepme.rows"] == "[1, 2, 3]"  # "van", "gogh", EOS
    inc.save(tmp_path / "uce.safetensors")
    loaded = Increment.load(tmp_path / "uce.safetensors")
    assert loaded.meta == inc.meta
    assert all(torch.equal(loaded.deltas[k], inc.deltas[k]) for k in inc.deltas)
