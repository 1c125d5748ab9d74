"""SepME training (erase/sepme.py), training data (erase/data.py) and the decoupling guarantee."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.increment import Increment
from sepme_engine.erase.data import generate_training_latents
from sepme_engine.erase.sepme import EarlyStopper, SepMEConfig, StepInfo, train_sepme
from sepme_engine.errors import InvalidInput, TrainingDiverged
from sepme_engine.models.text import encode_prompts
from tests._tiny import shared_tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run far faster single-threaded on a shared CPU (no oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAST = SepMEConfig(max_steps=4, min_steps=1, lr=0.5, seed=0)


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def pipe(request):
    return shared_tiny(request.param, seed=0, max_length=8)


@pytest.fixture(scope="module")
def latents():
    return torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))


def _predict(pipe, prompts: list[str], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = len(prompts)
    x = torch.randn(n, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    with torch.no_grad():
        return pipe.unet(x, t, encoder_hidden_states=encode_prompts(pipe, prompts)).sample


def _scaled(inc: Increment, factor: float) -> Increment:
    """The same null-space basis, coefficients blown up so ΔW is comparable to W."""
    g = torch.Generator().manual_seed(11)
    coefs = {k: factor * torch.randn(v.shape, generator=g) for k, v in inc.coefs.items()}
    return Increment.factored(inc.basis, coefs)


def test_early_stopper_synthetic() -> None:
    s = EarlyStopper(alpha=0.5, tau=0.0, min_steps=2, max_steps=100)
    seq = [1.0, -1.0, -1.0, -1.0, -1.0]
    # m: 1, 0, -0.5 (n=2, not > min_steps), -0.75 at n=3 -> stop
    out = [s.update(v) for v in seq[:4]]
    assert out == [False, False, False, True]
    assert s.stop_reason == "threshold" and s.n == 3 and s.momentum == -0.75
    cap = EarlyStopper(alpha=0.9, tau=-1.0, min_steps=0, max_steps=3)
    assert [cap.update(1.0) for _ in range(3)] == [False, False, True]
    assert cap.stop_reason == "cap"
    # momentum starts at L_cor(0), not 0
    first = EarlyStopper(alpha=0.9, tau=0.5, min_steps=0)
    assert first.update(1.0) is False and first.momentum == 1.0
    assert first.update(-100.0) is True and first.momentum == pytest.approx(0.9 - 10.0)


def test_training_result_pass_counts_and_pipe_untouched(pipe, latents) -> None:
    unet = pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    modules_before = dict(unet.named_modules())
    seen = []

    def count(_m, args, kwargs) -> None:
        seen.append(int((args[0] if args else kwargs["sample"]).shape[0]))

    handle = unet.register_forward_pre_hook(count, with_kwargs=True)
    cfg = dataclasses.replace(FAST, batch_size=2)
    try:
        r = train_sepme(pipe, "a cat", ["a dog", "a dog"], latents, cfg, "cpu")
    finally:
        handle.remove()
    assert r.iterations == 4 and r.stop_reason == "cap"
    assert r.unet_passes_training == 3 * 2 * 4 == sum(seen)
    assert r.lcor_history[-1] == r.final_lcor and len(r.lcor_history) == 4
    assert r.lcor_history[0] > 0  # C = 0: L_cor(0) = mean(r_old²)
    inc = r.increment
    assert inc.kind == "factored" and r.m_k == inc.basis.shape[0] == inc.rank()
    assert 0 < r.m_k < 32 and 0 < r.concept_null_fraction <= 1
    assert len(inc.layer_names()) == 8
    assert all(float(c.abs().max()) > 0 for c in inc.coefs.values())
    assert (
        inc.meta["sepme.prompt"] == "a cat"
        and inc.meta["sepme.preserve_prompts"] == '["", "a dog"]'
    )
    # the pipe is left as it was: same modules, same weights, grads flags restored
    assert dict(unet.named_modules()).keys() == modules_before.keys()
    assert all(m is modules_before[n] for n, m in unet.named_modules())
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert not hooks.delta_layers(unet)


def test_decoupling_is_exact_for_preserved_prompts(pipe, latents) -> None:
    preserve = ["a dog", "a red car"]
    r = train_sepme(pipe, "a cat", preserve, latents, FAST, "cpu")
    kept = ["", *preserve]
    base_kept, base_cat = _predict(pipe, kept), _predict(pipe, ["a cat"])
    scale = float(base_kept.abs().max())
    for inc in (r.increment, _scaled(r.increment, 0.3)):
        with hooks.attached(pipe.unet, [inc]):
            hooked_kept, hooked_cat = _predict(pipe, kept), _predict(pipe, ["a cat"])
        with hooks.apply_deltas_inplace(pipe.unet, hooks.sum_deltas([inc])):
            merged_kept = _predict(pipe, kept)
        # ΔW·e = 0 up to the float32 basis (γ_32·‖ΔW‖‖e‖ ≈ 2e-6 of ΔW's effect, which is
        # itself ≤ 1e-1·scale): the kept prompts move by float32 round-off only, ≪ 1e-5·scale
        assert (hooked_kept - base_kept).abs().max() <= 1e-5 * scale
        assert (merged_kept - base_kept).abs().max() <= 1e-5 * scale
    # ... while the concept itself moves (the large increment) and a paraphrase is not covered
    assert (hooked_cat - base_cat).abs().max() > 1e-2 * scale
    # the trained increment has changed the concept's prediction a little, too
    with hooks.attached(pipe.unet, [r.increment]):
        assert not torch.equal(_predict(pipe, ["a cat"]), base_cat)


def test_sequential_increments_do_not_disturb_each_other(pipe, latents) -> None:
    ri = train_sepme(pipe, "a cat", [], latents, FAST, "cpu")
    rj = train_sepme(pipe, "a dog", ["a cat"], latents, FAST, "cpu")
    inc_i, inc_j = _scaled(ri.increment, 0.3), _scaled(rj.increment, 0.3)
    base_cat, base_dog = _predict(pipe, ["a cat"]), _predict(pipe, ["a dog"])
    scale = float(base_cat.abs().max())
    with hooks.attached(pipe.unet, [inc_j]):
        assert (_predict(pipe, ["a cat"]) - base_cat).abs().max() <= 1e-5 * scale
        assert (_predict(pipe, ["a dog"]) - base_dog).abs().max() > 1e-2 * scale
    with hooks.apply_deltas_inplace(pipe.unet, hooks.sum_deltas([inc_i])):
        cat_i = _predict(pipe, ["a cat"])
    with hooks.apply_deltas_inplace(pipe.unet, hooks.sum_deltas([inc_i, inc_j])):
        cat_ij = _predict(pipe, ["a cat"])
    assert (cat_i - base_cat).abs().max() > 1e-2 * scale  # i does erase-move the cat
    assert (cat_ij - cat_i).abs().max() <= 1e-5 * scale  # adding j leaves it where i put it


def test_guided_generation_of_preserved_prompt_unchanged() -> None:
    pipe = shared_tiny("sd1", seed=1, max_length=8)
    lat, _ = generate_training_latents(pipe, "a cat", 1, 2, 7.5, 0, "cpu")
    r = train_sepme(pipe, "a cat", ["a dog"], lat, FAST, "cpu")
    big = _scaled(r.increment, 0.3)

    def gen(prompt: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return pipe(
            prompt, num_inference_steps=3, guidance_scale=7.5, generator=g, output_type="latent"
        ).images

    ref_dog, ref_cat = gen("a dog"), gen("a cat")
    with hooks.apply_deltas_inplace(pipe.unet, hooks.sum_deltas([big])):
        dog, cat = gen("a dog"), gen("a cat")
    # three sampler steps with guidance 7.5 amplify the per-step round-off (≤ 1e-5·scale) ~×10
    assert (dog - ref_dog).abs().max() <= 1e-4 * ref_dog.abs().max()
    assert (cat - ref_cat).abs().max() > 1e-2 * ref_cat.abs().max()


def test_returned_increment_is_the_one_at_the_stopping_iteration(pipe, latents) -> None:
    seen: list[tuple[StepInfo, dict[str, torch.Tensor]]] = []

    def progress(info: StepInfo) -> None:
        coefs = {
            n: m.terms[0][1].detach().clone() for n, m in hooks.delta_layers(pipe.unet).items()
        }
        seen.append((info, coefs))

    cfg = dataclasses.replace(FAST, tau=1e9, min_steps=3, max_steps=50)
    r = train_sepme(pipe, "a cat", ["a dog"], latents, cfg, "cpu", progress=progress)
    assert r.stop_reason == "threshold"
    assert r.iterations == cfg.min_steps + 2 == len(seen)  # first n with n > min_steps
    last_info, last_coefs = seen[-1]
    assert last_info.iteration == r.iterations - 1 and last_info.lcor == r.final_lcor
    assert last_info.momentum == r.final_m
    for name, coef in r.increment.coefs.items():
        assert torch.equal(coef, last_coefs[name])  # what produced final_lcor, not one step on
        assert not torch.equal(coef, seen[-2][1][name])  # the optimiser did move it each step
    assert [i.lcor for i, _ in seen] == r.lcor_history


def test_training_is_deterministic_for_a_seed(pipe, latents) -> None:
    a = train_sepme(pipe, "a cat", ["a dog"], latents, FAST, "cpu").increment
    b = train_sepme(pipe, "a cat", ["a dog"], latents, FAST, "cpu").increment
    c = train_sepme(
        pipe, "a cat", ["a dog"], latents, dataclasses.replace(FAST, seed=1), "cpu"
    ).increment
    assert torch.equal(a.basis, b.basis)
    assert all(torch.equal(a.coefs[n], b.coefs[n]) for n in a.layer_names())
    assert any(not torch.equal(a.coefs[n], c.coefs[n]) for n in a.layer_names())


def test_training_errors(pipe, latents) -> None:
    with pytest.raises(InvalidInput, match="own preserve set"):
        train_sepme(pipe, "a cat", ["a cat"], latents, FAST, "cpu")
    with pytest.raises(InvalidInput, match="empty"):
        train_sepme(pipe, " ", [], latents, FAST, "cpu")
    with pytest.raises(InvalidInput, match="bfloat16"):
        train_sepme(pipe, "a cat", [], latents, dataclasses.replace(FAST, dtype="bfloat16"), "cpu")
    bad = latents.clone()
    bad[:] = float("nan")
    with pytest.raises(TrainingDiverged, match="iteration 0"):
        train_sepme(pipe, "a cat", [], bad, FAST, "cpu")
    assert not hooks.delta_layers(pipe.unet)  # cleaned up after the failure
    with pytest.raises(InvalidInput):
        SepMEConfig(alpha=1.0)


def test_generate_training_latents_counts_passes_and_is_seeded() -> None:
    pipe = shared_tiny("sd1", seed=0, max_length=8)
    lat, passes = generate_training_latents(pipe, "a cat", 3, 2, 7.5, 4, "cpu", batch_size=2)
    assert lat.shape == (3, 4, 16, 16) and lat.dtype == torch.float32
    assert passes == 3 * 2 * 2
    lat1, passes1 = generate_training_latents(pipe, "a cat", 1, 2, 1.0, 4, "cpu")
    assert passes1 == 1 * 2 * 1
    lat2, _ = generate_training_latents(pipe, "a cat", 2, 2, 7.5, 4, "cpu", batch_size=1)
    # batch 1 vs batch 2: same numbers, other kernel blocking — float32 round-off through 2
    # sampler steps and the VAE, ≈ 1e-5 relative; atol scaled by the latents' magnitude
    scale = float(lat.abs().max())
    assert torch.allclose(lat2, lat[:2], atol=1e-4 * scale, rtol=1e-4)  # image i: seed + i only
    assert not torch.allclose(lat[0], lat[1])


def test_build_e_k_sorted_unique_and_drops_defaults_the_concept_mentions() -> None:
    from sepme_engine.erase.run import build_e_k

    defaults = ["circle", "red", "square", "stripes"]
    e = build_e_k("circle", others=["square"], earlier=["Monet"], default_preserve=defaults)
    assert e == ["Monet", "red", "square", "stripes"]  # sorted, unique, no "circle"
    # the order things are named in does not change E_k (so neither does the increment)
    assert (
        build_e_k("circle", others=["square"], earlier=["Monet"], default_preserve=defaults[::-1])
        == e
    )
    # a default that shares whole words with the concept is dropped; substrings are not words
    assert build_e_k("a Red circle", default_preserve=defaults) == ["square", "stripes"]
    assert build_e_k("reddish", default_preserve=["red"]) == ["red"]
    assert build_e_k("cat", default_preserve=["a cat", "a catalogue"]) == ["a catalogue"]
    # the user's own --preserve prompts are kept as given (except the concept's exact prompt)
    assert build_e_k("a red circle", preserve=["red", "a red circle", " "]) == ["red"]
