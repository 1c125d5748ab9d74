"""The shipped toy base, its training script, sampling (generate.py) and the evaluation API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sepme_engine.toy import (
    TOY_GUIDANCE,
    TOY_MAX_LENGTH,
    TOY_STEPS,
    TOY_TEXT_WIDTH,
    load_toy_pipeline,
    toy_pipeline_path,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline()


def _embed(pipe, prompts: list[str]) -> np.ndarray:
    tok = pipe.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        e = pipe.text_encoder(ids.input_ids)[0]
    return e.reshape(-1, e.shape[-1]).double().numpy()


def test_shipped_base_loads_offline_as_a_diffusers_pipeline() -> None:
    from diffusers import StableDiffusionPipeline

    path = toy_pipeline_path()
    p = StableDiffusionPipeline.from_pretrained(
        str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    assert p.tokenizer.model_max_length == TOY_MAX_LENGTH
    assert p.text_encoder.config.hidden_size == TOY_TEXT_WIDTH
    assert p.unet.config.cross_attention_dim == TOY_TEXT_WIDTH
    assert p.unet.config.sample_size * 2 ** (len(p.vae.config.block_out_channels) - 1) == 32
    assert type(p.scheduler).__name__ == "DDIMScheduler"
    # weights ship as fp16 safetensors, small
    files = list(path.rglob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in files) < 15e6
    from safetensors import safe_open

    with safe_open(str(path / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    cfg = json.loads((path / "toy_train_config.json").read_text())
    # the training record travels with the weights: its config, and the steps of every run
    # (the shipped base is a first run resumed once; see sepme_engine/toy/train.py)
    assert isinstance(cfg["config"]["seed"], int) and cfg["config"]["text_width"] == TOY_TEXT_WIDTH
    assert cfg["steps"] > cfg.get("resumed_from_steps", 0) >= 0


def test_shipped_tokenizer_has_toy_words_as_single_tokens(pipe) -> None:
    from sepme_engine.toy.tokenizer import TOY_WORDS

    for w in TOY_WORDS:
        assert len(pipe.tokenizer.tokenize(w)) == 1, w
    assert (toy_pipeline_path() / "tokenizer" / "vocab.json").is_file()
    assert (toy_pipeline_path() / "tokenizer" / "merges.txt").is_file()


@pytest.mark.parametrize(
    "concepts",
    [
        ["red", "green", "blue", "circle", "square", "triangle", "stripes", "checks", "plain"],
        [
            "a red circle on stripes",
            "a green square on checks",
            "a blue triangle on plain",
            "a yellow cross on stripes",
            "a magenta circle on checks",
            "a cyan square on plain",
            "a red cross",
            "a triangle on checks",
            "yellow",
        ],
    ],
)
def test_null_space_of_blank_plus_nine_prompts(pipe, concepts) -> None:
    e = _embed(pipe, [""] + concepts)  # (10·L, d)
    d = e.shape[1]
    s = np.linalg.svd(e, compute_uv=False)
    rank = int((s > 1e-6 * s[0]).sum())
    assert d - rank >= d // 4, (d, rank)


def test_quality_sanity(pipe) -> None:
    from sepme_engine.sampling import sample_images
    from sepme_engine.toy.judge import judge_batch

    prompts = ["a red circle on plain", "a blue square on stripes", "a yellow cross on checks"]
    n = 4
    imgs = sample_images(pipe, prompts, 0, n, TOY_STEPS, TOY_GUIDANCE)
    verdicts = judge_batch(imgs)
    truth = [
        ("red", "circle", "plain"),
        ("blue", "square", "stripes"),
        ("yellow", "cross", "checks"),
    ]
    for axis_i, axis in enumerate(("colour", "shape", "style")):
        hits = sum(
            verdicts[i * n + j].get(axis) == truth[i][axis_i] for i in range(3) for j in range(n)
        )
        assert hits >= 8, (axis, hits)  # at least 8 of 12 right


def test_sample_images_reproducible_and_batch_independent(pipe) -> None:
    from sepme_engine.sampling import sample_images

    a = sample_images(pipe, ["red", "a circle"], seeds=5, n=3, steps=4, guidance=3.0, batch_size=6)
    b = sample_images(pipe, ["a circle"], seeds=[5, 6, 7], n=3, steps=4, guidance=3.0, batch_size=1)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    # batch 6 vs batch 1: float32 round-off through 4 steps and the VAE, images in [0, 1];
    # 2e-3 is half an 8-bit level (what a PNG keeps), ≫ float32 eps·depth
    np.testing.assert_allclose(a[3:], b, atol=2e-3)
    assert np.abs(a[0] - a[1]).max() > 0.05  # different seeds, different images
    c = sample_images(pipe, ["red"], seeds=5, n=1, steps=4, guidance=3.0)
    np.testing.assert_allclose(a[0], c[0], atol=2e-3)


def test_image_grid_and_save(tmp_path) -> None:
    from sepme_engine.errors import InvalidInput
    from sepme_engine.sampling import image_grid, save_grid

    imgs = np.random.default_rng(0).random((6, 32, 32, 3)).astype(np.float32)
    g = image_grid(imgs, 2, 3, ["row one", "row two"], ["a", "b", "c"])
    assert g.width > 3 * 96 and g.height > 2 * 96
    bare = image_grid(imgs, 2, 3, None)
    assert g.width > bare.width  # labels take room
    p = save_grid(tmp_path / "g" / "grid.png", imgs, 2, 3, ["x", "y"])
    assert p.is_file() and p.stat().st_size > 0
    with pytest.raises(InvalidInput):
        image_grid(imgs, 2, 2, None)


def test_evaluate_and_concept_rates_small(pipe) -> None:
    from sepme_engine.toy.evaluate import concept_rates, evaluate

    kw = dict(n_per_prompt=2, seed=1, steps=3, guidance=3.0, n_blank=4, n_bare=1)
    prompts = ["a red circle on plain", "a green cross on stripes"]
    r1 = evaluate(pipe, prompts=prompts, **kw)
    r2 = evaluate(pipe, prompts=prompts, **kw)
    assert r1.full == r2.full and r1.chance == r2.chance and r1.bare == r2.bare
    assert set(r1.full) == {"red", "green", "circle", "cross", "plain", "stripes"}
    assert set(r1.bare) == set(r1.chance) and len(r1.chance) == 13
    for axis in ("colour", "shape", "style"):  # chance rates sum to one per axis
        from sepme_engine.toy.world import AXES

        assert abs(sum(r1.chance[c] for c in AXES[axis]) - 1.0) < 1e-9  # ≤ 6 float64 adds
    cr = concept_rates(pipe, prompts, "red", n=2, seed=1, steps=3, guidance=3.0)
    assert cr.axis == "colour" and set(cr.per_prompt) == set(prompts)
    assert 0.0 <= cr.mean <= 1.0


def test_train_script_writes_a_loadable_pipeline(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    from sepme_engine.toy.train import CONFIG_NAME, main

    out = tmp_path / "toy"
    main(
        ["--out", str(out), "--steps", "2", "--vae-steps", "2", "--unet-channels", "16,32",
         "--batch", "4", "--threads", "1", "--seed", "3"]
    )  # fmt: skip
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg["steps"] == 2 and cfg["config"]["seed"] == 3
    p = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert p.tokenizer.model_max_length == TOY_MAX_LENGTH
    p.set_progress_bar_config(disable=True)
    img = p("a red circle", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 32, 32, 3)
    # latents are centred and whitened inside the VAE: scaling_factor 1, sample ≈ mean
    assert p.vae.config.scaling_factor == 1.0
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d = p.vae.encode(x).latent_dist
    assert float(d.std.max()) < 1e-3  # a modelling property (std ≈ 0), not round-off
