"""The toy world: renderer contract, analytic judge accuracy, captions, small tokenizer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sepme_engine.toy.judge import Verdict, judge, judge_batch
from sepme_engine.toy.tokenizer import MAX_LENGTH, TOY_WORDS, toy_tokenizer, write_toy_tokenizer
from sepme_engine.toy.world import (
    COLOUR_RGB,
    COLOURS,
    CONCEPTS,
    SHAPES,
    STYLES,
    Scene,
    background,
    caption_parts,
    coverage,
    random_caption,
    random_scene,
    render,
    sample_batch,
)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")
    h = sum(k[i] * p[:, i : i + 32] for i in range(7))
    return sum(k[i] * h[i : i + 32] for i in range(7))


def test_thirteen_concepts() -> None:
    assert len(SHAPES) == 4 and len(COLOURS) == 6 and len(STYLES) == 3
    assert len(set(CONCEPTS)) == 13


def test_judge_accuracy_on_2000_rendered_images() -> None:
    rng = np.random.default_rng(1234)
    scenes = [random_scene(rng) for _ in range(2000)]
    images = np.stack([render(s, rng) for s in scenes])
    verdicts = judge_batch(images)
    for axis in ("colour", "shape", "style"):
        acc = np.mean(
            [v.get(axis) == getattr(s, axis) for v, s in zip(verdicts, scenes, strict=True)]
        )
        assert acc >= 0.99, (axis, acc)


def test_judge_robust_to_blur_and_noise() -> None:
    rng = np.random.default_rng(7)
    n, ok = 150, Counter()
    for _ in range(n):
        s = random_scene(rng)
        img = np.clip(_blur(render(s, rng), 0.7) + rng.normal(0, 0.03, (32, 32, 3)), 0, 1)
        v = judge(img)
        for axis in ("colour", "shape", "style"):
            ok[axis] += v.get(axis) == getattr(s, axis)
    assert min(ok.values()) / n >= 0.95, ok


def test_judge_is_deterministic_and_typed() -> None:
    img = render(random_scene(np.random.default_rng(0)), np.random.default_rng(0))
    v = judge(img)
    assert isinstance(v, Verdict) and v == judge(img.copy())
    with pytest.raises(ValueError):
        judge(np.zeros((16, 16, 3)))


def test_judge_sees_each_value() -> None:
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        for colour in COLOURS:
            for style in STYLES:
                s = random_scene(rng, shape=shape, colour=colour, style=style)
                assert judge(render(s, rng)) == Verdict(colour, shape, style)


def test_render_contract() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        s = random_scene(rng)
        img = render(s, rng)
        assert img.shape == (32, 32, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert 0.22 * 32 <= s.r <= 0.36 * 32
        assert 0.85 <= s.brightness <= 1.0 and 0.05 <= s.grey <= 0.35
        cov = coverage(s.shape, s.cx, s.cy, s.r)
        # fully inside: the shape's box (centre ± half-extent) lies in the canvas
        assert s.cx - s.r >= 0 and s.cx + s.r <= 32 and s.cy - s.r >= 0 and s.cy + s.r <= 32
        ys, xs = np.nonzero(cov > 0.5)
        assert abs((xs.max() + 1 - xs.min()) / 2 - s.r) <= 1.0
        assert abs((ys.max() + 1 - ys.min()) / 2 - s.r) <= 1.0
        # anti-aliased: some partial coverage on the edge
        assert ((cov > 0.05) & (cov < 0.95)).any()
        # interior pixels carry the shape colour (± noise)
        clean = render(s, noise=False)
        inside = cov >= 1.0
        want = np.asarray(COLOUR_RGB[s.colour]) * s.brightness
        # float32 colour × brightness: ≤ 2·eps32 ≈ 2.4e-7 per channel; atol 1e-5 ≫ that
        assert np.allclose(clean[inside], want, atol=1e-5)
        assert np.abs(img - clean).std() < 0.03


def test_backgrounds() -> None:
    g = 0.2
    plain = background("plain", g)  # np.allclose: rtol 1e-5·|g| ≥ 2e-6 ≫ float32's 1.5e-8 at g
    assert np.allclose(plain, g)
    st = background("stripes", g)
    assert np.allclose(st[:, 0], st[:, 17])  # horizontal: constant along a row
    assert np.allclose(st[0:2, 0], g) and np.allclose(st[2:4, 0], g + 0.25)
    ch = background("checks", g)
    assert np.allclose(ch[:4, :4], g) and np.allclose(ch[:4, 4:8], g + 0.25)
    assert np.allclose(ch[4:8, :4], g + 0.25)
    shifted = background("stripes", g, oy=1)
    assert np.allclose(shifted[0, 0], g) and np.allclose(shifted[1, 0], g + 0.25)


def test_triangle_apex_up_and_cross_arms() -> None:
    tri = coverage("triangle", 16, 16, 10) > 0.5
    assert tri[7].sum() < tri[24].sum()  # narrow at the top, wide at the bottom
    cross = coverage("cross", 16, 16, 10) > 0.5
    assert cross[16].sum() == 20  # a full arm across
    assert cross[8].sum() == 8  # arm 40 % of the extent (20 px) wide
    assert not cross[8, 8]


def test_captions() -> None:
    assert caption_parts("red", "circle", "stripes") == "a red circle on stripes"
    assert caption_parts("red", "circle", None) == "a red circle"
    assert caption_parts(None, "circle", "stripes") == "a circle on stripes"
    assert caption_parts(None, "circle", None) == "circle"
    assert caption_parts("red", None, None) == "red"
    assert caption_parts(None, None, "stripes") == "stripes"
    assert caption_parts(None, None, None) == ""
    rng = np.random.default_rng(0)
    s = Scene("circle", "red", "stripes", 16, 16, 8, 1.0, 0.2)
    caps = Counter(random_caption(s, rng) for _ in range(4000))
    assert 0.08 < caps[""] / 4000 < 0.12
    assert 0.4 < caps["a red circle on stripes"] / 4000 < 0.6
    for single in ("red", "circle", "stripes"):
        assert caps[single] > 40


def test_tokenizer_words_are_single_tokens(tmp_path) -> None:
    tok = toy_tokenizer()
    assert tok.model_max_length == MAX_LENGTH == 8
    assert len(tok) < 1000
    for w in TOY_WORDS:
        assert len(tok.tokenize(w)) == 1, w
    ids = tok("a red circle on stripes", padding="max_length", max_length=8).input_ids
    assert len(ids) == 8 and ids[0] == tok.bos_token_id and ids[6:] == [tok.eos_token_id] * 2
    assert len(tok.tokenize("purple dog")) > 2  # unknown words fall back to pieces
    # the folder loads with the plain from_pretrained path
    from transformers import CLIPTokenizer

    write_toy_tokenizer(tmp_path / "tok")
    tok2 = CLIPTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert tok2("magenta cross").input_ids == tok("magenta cross").input_ids
    assert len(tok2) == len(tok)


def test_sample_batch_shape_weights() -> None:
    rng = np.random.default_rng(0)
    _, captions, scenes = sample_batch(rng, 64, 0.0, shape_p=[0, 0, 1, 3])
    shapes = [s.shape for s in scenes]
    assert set(shapes) == {"triangle", "cross"}
    assert shapes.count("cross") > shapes.count("triangle")
    with pytest.raises(ValueError, match="shape_p"):
        sample_batch(rng, 4, 0.0, shape_p=[1, 1])
