"""The closed form in context (erase/closed_form.py): erase rows from the captions naming the
concept, hold rows from the others, the push past the anchor, and the crowded concept's
neighbours held softly (sepme.relax_e_k, erase/run.py); SepME's iterations trained in context
(`train_contexts`)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sepme_engine.config import ERASE_DEFAULTS
from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.erase import settings as erase_settings
from sepme_engine.erase.closed_form import (
    closed_form_factor,
    context_rows,
    neighbours,
)
from sepme_engine.erase.nullspace import null_space
from sepme_engine.erase.sepme import (
    ContextStage,
    SepMEConfig,
    closed_form_sepme,
    relax_e_k,
    train_sepme,
)
from sepme_engine.errors import ConfigError, InvalidInput
from sepme_engine.models.text import encode_prompts
from sepme_engine.toy.vocab import CONCEPTS, SHAPES, captions
from tests._tiny import shared_tiny

EPS32 = float(torch.finfo(torch.float32).eps)
PRESERVE = ["a dog", "a cat"]
CONCEPT = "car"
POOL = (
    "a red car",
    "a car on a road",
    "a photo of a car",
    "a red boat",
    "a boat on a road",
    "a photo of a boat",
    "a dog",
)


@pytest.fixture(scope="module")
def pipe():
    return shared_tiny("sd1", seed=0, max_length=8)


def test_context_rows_pair_each_caption_naming_the_concept_with_its_anchor() -> None:
    pairs, holds = context_rows("cross", captions(), "")
    assert ("a red cross on stripes", "a red on stripes") in pairs
    assert ("cross", "") not in pairs  # the bare prompt is the closed form's own row
    assert len(pairs) == 6 * 3 + 6 + 3 + 1 - 1  # colour x style, colour, style, both none
    assert "a red circle on stripes" in holds and all("cross" not in h for h in holds)
    assert len(pairs) + len(holds) == len(captions()) - 1 == 138
    # whole words only; the anchor text takes the concept's place
    pairs, holds = context_rows("red", ["a red car", "a redwood", "tired"], "blue")
    assert pairs == [("a red car", "a blue car")] and holds == ["a redwood", "tired"]


def test_neighbours_are_the_concepts_interchangeable_in_the_pool() -> None:
    others = [c for c in CONCEPTS if c != "cross"]
    assert neighbours("cross", others, captions()) == ["circle", "square", "triangle"]
    assert neighbours("red", [c for c in CONCEPTS if c != "red"], captions()) == [
        "green",
        "blue",
        "yellow",
        "magenta",
        "cyan",
    ]
    assert neighbours("car", ["boat", "dog", "road"], POOL) == ["boat"]
    assert neighbours("car", ["boat"], ()) == []


def test_push_scales_the_solution_and_hold_rows_shrink_their_change(pipe) -> None:
    emb = encode_prompts(pipe, ["", *PRESERVE])
    basis = null_space(emb)
    x, a = encode_prompts(pipe, [CONCEPT])[0], encode_prompts(pipe, [""])[0]
    g0 = closed_form_factor(basis, x, a, 0.1)
    g2 = closed_form_factor(basis, x, a, 0.1, push=2.0)
    assert torch.equal(g2, 3.0 * g0)  # float64, one multiplication by 3: exact up to rounding
    held = encode_prompts(pipe, ["a red boat", "a photo of a boat"])
    gh = closed_form_factor(basis, x, a, 0.1, emb_hold=held, hold=100.0)
    s = basis.double()
    h = held.reshape(-1, held.shape[-1]).double() @ s.T
    # the change the increment makes on the held captions' rows (∝ ‖G·S·hᵀ‖ for every layer)
    assert float((h @ gh.T).norm()) < 0.5 * float((h @ g0.T).norm())


def test_in_context_increment_keeps_e_k_exact_and_reaches_the_captions(pipe) -> None:
    bare = closed_form_sepme(pipe, CONCEPT, PRESERVE, SepMEConfig(), "cpu").increment
    cfg = SepMEConfig(contexts=POOL, cf_push=1.0, cf_hold=10.0)
    inc = closed_form_sepme(pipe, CONCEPT, PRESERVE, cfg, "cpu").increment
    d = inc.basis.shape[1]
    in_context = encode_prompts(pipe, ["a red car", "a photo of a car"]).double()
    reach_bare = reach_ctx = 0.0
    for name, _ in cross_attention_kv(pipe.unet):
        dw = inc.delta(name).double()
        for prompt in ["", *PRESERVE]:  # separability holds whatever the pool
            e = encode_prompts(pipe, [prompt])[0].double()
            tol = (1e-6 + 8 * EPS32 * math.sqrt(d)) * float(dw.norm()) * float(e.norm())
            assert float((e @ dw.T).norm()) <= tol, (prompt, name)
        reach_ctx += float((in_context @ dw.T).norm() ** 2)
        reach_bare += float((in_context @ bare.delta(name).double().T).norm() ** 2)
    assert reach_ctx > 2 * reach_bare  # the captions naming the concept are moved, not just "car"
    assert inc.meta["sepme.settings"].count("a photo of a car") == 1  # recorded with the config


def test_a_crowded_concept_holds_its_pool_neighbours_softly() -> None:
    from sepme_engine.erase.run import build_e_k
    from sepme_engine.toy import load_toy_pipeline

    toy = load_toy_pipeline()
    assert erase_settings.build("sepme", "toy").config.contexts == ()  # opt-in
    cfg = SepMEConfig(init="closed-form", contexts=captions(), cf_push=3.0, cf_hold=30.0)
    for concept, expect in [("cross", ["circle", "square", "triangle"]), ("circle", [])]:
        e_k = build_e_k(concept, default_preserve=list(CONCEPTS))
        kept, held = relax_e_k(toy, concept, e_k, e_k, cfg)
        assert held == expect, concept
        assert kept == [q for q in e_k if q not in expect]
    # never a prompt that is not removable (the call's other concepts, earlier, --preserve)
    e_k = build_e_k("cross", others=["circle"], default_preserve=list(CONCEPTS))
    removable = [q for q in e_k if q != "circle"]
    kept, held = relax_e_k(toy, "cross", e_k, removable, cfg)
    assert "circle" in kept and held == ["square", "triangle"]
    # the paper's start (C = 0) and a pool-less profile leave E_k as it is
    for c in (SepMEConfig(init="zero", contexts=captions()), SepMEConfig(init="closed-form")):
        assert relax_e_k(toy, "cross", e_k, removable, c) == (e_k, [])
    assert set(SHAPES) - {"cross"} <= set(build_e_k("cross", default_preserve=list(CONCEPTS)))


def test_contexts_come_from_config_toml_as_a_list_of_prompts(tmp_path) -> None:
    from sepme_engine.config import load_config

    (tmp_path / "config.toml").write_text(
        '[erase.sepme]\ncontexts = ["a red car", "a car on a road"]\ncf_push = 2\n'
    )
    cfg = erase_settings.build("sepme", "sd1", load_config(tmp_path)).config
    assert cfg.contexts == ("a red car", "a car on a road") and cfg.cf_push == 2.0
    assert ERASE_DEFAULTS["sd1"]["contexts"] == []  # SD bases: the paper's bare prompt
    (tmp_path / "config.toml").write_text("[erase.sepme]\ncontexts = [1, 2]\n")
    with pytest.raises(ConfigError, match="contexts"):
        erase_settings.build("sepme", "sd1", load_config(tmp_path))
    with pytest.raises(InvalidInput):
        SepMEConfig(cf_push=-1.0)


def test_the_in_context_stage_follows_the_papers_stop_and_keeps_e_k_exact(pipe) -> None:
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    # τ far above L_cor: the paper's stop comes at the first iteration it may (n = min_steps + 1)
    cfg = SepMEConfig(max_steps=20, min_steps=1, lr=0.5, batch_size=2, seed=0, tau=1e9)
    bare = train_sepme(pipe, CONCEPT, PRESERVE, latents, cfg, "cpu")
    assert (bare.iterations, bare.context_stop) == (3, "")
    # a pool naming nothing: no stage, the very run of the paper's loss
    none = dataclasses.replace(cfg, train_contexts=("a red boat", "a dog"))
    same = train_sepme(pipe, CONCEPT, PRESERVE, latents, none, "cpu")
    assert same.lcor_history == bare.lcor_history
    assert all(torch.equal(same.increment.coefs[k], c) for k, c in bare.increment.coefs.items())
    ctx = train_sepme(
        pipe, CONCEPT, PRESERVE, latents, dataclasses.replace(cfg, train_contexts=POOL), "cpu"
    )
    # up to the paper's stop the same run; then 2 iterations of 1 bare + 1 caption item each, until
    # both momenta have 2 values below τ
    assert ctx.lcor_history[:3] == bare.lcor_history
    assert (ctx.iterations, ctx.context_iterations, ctx.context_stop) == (5, 2, "threshold")
    assert ctx.stop_reason == "threshold"
    assert ctx.unet_passes_training == 3 * 2 * 5
    d = ctx.increment.basis.shape[1]
    for name, _ in cross_attention_kv(pipe.unet):
        dw = ctx.increment.delta(name).double()
        assert not torch.equal(ctx.increment.coefs[name], bare.increment.coefs[name])
        for prompt in ["", *PRESERVE]:  # separability holds whatever it trains on
            e = encode_prompts(pipe, [prompt])[0].double()
            tol = (1e-6 + 8 * EPS32 * math.sqrt(d)) * float(dw.norm()) * float(e.norm())
            assert float((e @ dw.T).norm()) <= tol, (prompt, name)
    assert "a photo of a car" in ctx.increment.meta["sepme.settings"]  # recorded with the config


def test_the_in_context_stage_keeps_the_papers_increment_when_it_does_not_reach_its_stop() -> None:
    cfg = SepMEConfig(tau=-1.0, max_steps=100)
    kept = {"l": torch.ones(2, 3)}
    stage = ContextStage(cfg, 4, kept, -2.0, -1.5)
    kept["l"].zero_()  # the stage holds its own copy
    assert stage.end == 8  # as many iterations again as the paper's stop took
    which = torch.tensor([0, 3])  # a bare item, the 3rd caption
    assert [int(i) for i in stage.items(4, 2, 5)] == [0, 1]
    assert [int(i) for i in stage.items(5, 2, 5)] == [0, 2]
    ends = [stage.update(n, which, torch.tensor([-2.0, 0.5])) for n in range(4, 8)]
    assert ends == [False, False, False, True] and stage.outcome == "budget"
    assert torch.equal(stage.kept["l"], torch.ones(2, 3)) and stage.kept_lcor == -2.0
    both = ContextStage(cfg, 4, kept, -2.0, -1.5)
    ends = [both.update(n, which, torch.tensor([-2.0, -3.0])) for n in range(4, 6)]
    assert ends == [False, True] and both.outcome == "threshold" and both.momentum < cfg.tau
    assert ContextStage(dataclasses.replace(cfg, max_steps=6), 4, kept, 0.0, 0.0).end == 6


def test_train_contexts_are_the_toy_profiles_captions_and_opt_in_on_sd(tmp_path) -> None:
    from sepme_engine.config import load_config

    assert erase_settings.build("sepme", "toy").config.train_contexts == ()  # opt-in
    assert erase_settings.build("sepme", "sd1").config.train_contexts == ()  # the paper's loss
    (tmp_path / "config.toml").write_text('[erase.sepme]\ntrain_contexts = ["a red car"]\n')
    cfg = erase_settings.build("sepme", "sd1", load_config(tmp_path)).config
    assert cfg.train_contexts == ("a red car",)
    (tmp_path / "config.toml").write_text('[erase.sepme]\ntrain_contexts = "a red car"\n')
    with pytest.raises(ConfigError, match="train_contexts"):
        erase_settings.build("sepme", "sd1", load_config(tmp_path))
