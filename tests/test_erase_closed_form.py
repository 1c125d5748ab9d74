"""The closed-form decoupled increment (erase/closed_form.py), SepME's closed-form start, the
batched passes, and the verdict measured after training (erase/verdict.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.erase.closed_form import closed_form_coefs
from sepme_engine.erase.sepme import SepMEConfig, closed_form_sepme, train_sepme
from sepme_engine.erase.verdict import classify, residual_correlation
from sepme_engine.errors import InvalidInput
from sepme_engine.models.text import encode_prompts
from tests._tiny import shared_tiny

EPS32 = float(torch.finfo(torch.float32).eps)
PRESERVE = ["a dog", "a cat"]
CONCEPT = "a red car"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def pipe(request):
    return shared_tiny(request.param, seed=0, max_length=8)


@pytest.fixture(scope="module")
def latents():
    return torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))


def _kv_gap(pipe, inc, concept: str, anchor: str = "") -> tuple[float, float]:
    """Σ_ℓ ‖W e(c)ᵀ − W e(anchor)ᵀ‖² before and ‖(W+ΔW) e(c)ᵀ − W e(anchor)ᵀ‖² after."""
    x, a = (encode_prompts(pipe, [p])[0].double() for p in (concept, anchor))
    before = after = 0.0
    for name, module in cross_attention_kv(pipe.unet):
        w = module.weight.detach().double()
        dw = inc.delta(name).double()
        before += float((((x - a) @ w.T) ** 2).sum())
        after += float(((x @ (w + dw).T - a @ w.T) ** 2).sum())
    return before, after


def test_closed_form_leaves_every_preserved_prompt_unchanged(pipe) -> None:
    r = closed_form_sepme(pipe, CONCEPT, PRESERVE, SepMEConfig(), "cpu")
    assert r.iterations == 0 and r.unet_passes_training == 0 and r.stop_reason == "closed-form"
    inc = r.increment
    d = inc.basis.shape[1]
    for prompt in ["", *PRESERVE]:
        e = encode_prompts(pipe, [prompt])[0].double()  # [L, d]
        for name, _ in cross_attention_kv(pipe.unet):
            dw = inc.delta(name).double()
            moved = float((e @ dw.T).norm())
            # S's rows are null for E up to rtol (1e-6 relative, nullspace.py) plus float32
            # rounding of S and of D·S, ~eps32·sqrt(d) relative each
            tol = (1e-6 + 8 * EPS32 * math.sqrt(d)) * float(dw.norm()) * float(e.norm())
            assert moved <= tol, (prompt, name, moved, tol)
            assert float(dw.norm()) > 0  # the increment is not trivially zero
    # and through the model: the blank and preserved prompts' keys/values are those of the base
    with torch.no_grad(), hooks.attached(pipe.unet, [inc]):
        for prompt in ["", *PRESERVE]:
            e = encode_prompts(pipe, [prompt])
            for _, m in cross_attention_kv(pipe.unet):
                out, ref = m(e), torch.nn.functional.linear(e, m.weight, m.bias)
                assert torch.allclose(out, ref, rtol=0, atol=64 * EPS32 * float(ref.abs().max()))


def test_closed_form_closes_the_concept_gap_and_is_the_minimiser(pipe) -> None:
    cfg = SepMEConfig(cf_ridge=1e-3)
    r = closed_form_sepme(pipe, CONCEPT, PRESERVE, cfg, "cpu")
    before, after = _kv_gap(pipe, r.increment, CONCEPT)
    assert after < 0.5 * before
    # the same ratio from the float64 solve and from float32 forward passes: rel 1e-4 is far
    # above float32 round-off of sums over d ≤ 64 terms (γ_64 ≈ 4e-6)
    assert r.cf_gap_left == pytest.approx(after / before, rel=1e-4)
    # optimality: any perturbation of D inside the same parametrisation raises the objective
    layers = cross_attention_kv(pipe.unet)
    basis = r.increment.basis
    x = encode_prompts(pipe, [CONCEPT])[0]
    a = encode_prompts(pipe, [""])[0]
    coefs, _ = closed_form_coefs(layers, basis, x, a, cfg.cf_ridge)
    name, module = layers[0]
    w, s = module.weight.detach().double(), basis.double()
    x64, a64 = x.double(), a.double()

    def objective(dd: torch.Tensor) -> float:
        res = x64 @ (w + dd @ s).T - a64 @ w.T
        return float((res**2).sum() + cfg.cf_ridge * ((dd @ s) ** 2).sum())

    d0 = coefs[name].double()
    best = objective(d0)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        bump = (
            1e-2 * float(d0.abs().max()) * torch.randn(d0.shape, generator=g, dtype=torch.float64)
        )
        assert objective(d0 + bump) > best


def test_anchor_changes_the_target_and_the_concept_cannot_be_its_own_anchor(pipe) -> None:
    base = closed_form_sepme(pipe, CONCEPT, PRESERVE, SepMEConfig(), "cpu").increment
    other = closed_form_sepme(pipe, CONCEPT, PRESERVE, SepMEConfig(anchor="a boat"), "cpu")
    name = next(iter(base.coefs))
    assert not torch.allclose(base.coefs[name], other.increment.coefs[name])
    b2, a2 = _kv_gap(pipe, other.increment, CONCEPT, anchor="a boat")
    assert a2 < 0.5 * b2
    with pytest.raises(InvalidInput):
        closed_form_sepme(pipe, CONCEPT, PRESERVE, SepMEConfig(anchor=CONCEPT), "cpu")
    with pytest.raises(InvalidInput):
        SepMEConfig(init="random")


def test_init_zero_starts_at_zero_and_closed_form_starts_at_the_closed_form(pipe, latents) -> None:
    one = SepMEConfig(max_steps=1, min_steps=0, seed=0)
    z = train_sepme(pipe, CONCEPT, PRESERVE, latents, one, "cpu")
    assert all(bool((c == 0).all()) for c in z.increment.coefs.values())
    assert z.cf_gap_left is None
    cf = train_sepme(
        pipe, CONCEPT, PRESERVE, latents, dataclasses.replace(one, init="closed-form"), "cpu"
    )
    ref = closed_form_sepme(pipe, CONCEPT, PRESERVE, one, "cpu").increment
    for name, c in cf.increment.coefs.items():
        # D/β·β in float32: one rounding each way
        assert torch.allclose(c, ref.coefs[name], rtol=4 * EPS32, atol=0)
    # its L_cor starts far below the zero start's (the gap is closed before any iteration)
    assert abs(cf.lcor_history[0]) < abs(z.lcor_history[0])


def test_init_zero_is_the_default_papers_run(pipe, latents) -> None:
    """SepMEConfig's own default is the paper's start; an explicit init="zero", unbatched, gives
    the identical trajectory and coefficients (the code path of the previous release)."""
    cfg = SepMEConfig(max_steps=5, min_steps=1, lr=0.5, seed=0)
    assert cfg.init == "zero" and cfg.batched is False
    a = train_sepme(pipe, CONCEPT, PRESERVE, latents, cfg, "cpu")
    b = train_sepme(
        pipe,
        CONCEPT,
        PRESERVE,
        latents,
        dataclasses.replace(cfg, init="zero", batched=False),
        "cpu",
    )
    assert a.lcor_history == b.lcor_history
    assert all(torch.equal(a.increment.coefs[k], b.increment.coefs[k]) for k in a.increment.coefs)


def test_batched_passes_match_the_separate_passes(pipe, latents) -> None:
    cfg = SepMEConfig(max_steps=4, min_steps=1, lr=0.5, seed=0, init="closed-form")
    sep = train_sepme(pipe, CONCEPT, PRESERVE, latents, cfg, "cpu")
    bat = train_sepme(
        pipe, CONCEPT, PRESERVE, latents, dataclasses.replace(cfg, batched=True), "cpu"
    )
    assert bat.iterations == sep.iterations
    # same draws, same maths; only the batch size of the UNet's matmuls differs (round-off)
    scale = max(abs(v) for v in sep.lcor_history)
    for x, y in zip(sep.lcor_history, bat.lcor_history, strict=True):
        assert abs(x - y) <= 1e-4 * scale
    # the frozen items of a batched call never see the increment: a mask of zeros is the base
    inc = sep.increment
    e = encode_prompts(pipe, [CONCEPT]).expand(2, -1, -1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=e).sample
        with hooks.attached(pipe.unet, [inc]):
            tuned = pipe.unet(x, t, encoder_hidden_states=e).sample
            with hooks.item_mask(pipe.unet, torch.tensor([0.0, 1.0])):
                mixed = pipe.unet(x, t, encoder_hidden_states=e).sample
    assert torch.equal(mixed[0], base[0])
    assert torch.allclose(mixed[1], tuned[1], rtol=0, atol=64 * EPS32 * float(tuned.abs().max()))
    assert not torch.allclose(tuned[0], base[0])


def test_residual_correlation_is_one_for_no_change_and_drops_after_training(pipe, latents) -> None:
    zero = train_sepme(
        pipe, CONCEPT, PRESERVE, latents, SepMEConfig(max_steps=1, min_steps=0), "cpu"
    )
    rho0, passes = residual_correlation(pipe, zero.increment, CONCEPT, latents, draws=6)
    assert passes == 18
    # no increment: r_new and r_old are the same tensor, ρ = ⟨r, r⟩ / (‖r‖·‖r‖) is 1 up to the
    # rounding of the three reductions and the division (a few EPS32 even if done in float32)
    assert rho0 == pytest.approx(1.0, abs=8 * EPS32)
    cfg = SepMEConfig(max_steps=40, min_steps=1, lr=0.5, beta=0.05, seed=0, init="closed-form")
    r = train_sepme(pipe, CONCEPT, PRESERVE, latents, cfg, "cpu")
    rho, _ = residual_correlation(pipe, r.increment, CONCEPT, latents, draws=6)
    assert rho < 0.9


def test_classify() -> None:
    assert classify(-0.2, (0.1, 0.2), "threshold") == ("erased", "")
    assert classify(0.3, (0.5, 0.2), "threshold")[0] == "weakened"
    assert classify(0.9, (1.0, 0.1), "cap") == ("not erased", "raise-steps")
    assert classify(-0.01, None, "threshold")[0] == "erased"
    assert classify(0.3, None, "threshold") == ("weakened", "lower-tau")
    assert classify(0.8, None, "closed-form") == ("not erased", "use-sepme")
