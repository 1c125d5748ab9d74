"""The toy verdict's cost: the blank prompt's samples (chance) are drawn once, unguided."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepme_engine.erase.sepme import SepMEConfig, closed_form_sepme
from sepme_engine.erase.verdict import toy_judged_rates
from sepme_engine.sampling import sample_images
from sepme_engine.toy import TOY_GUIDANCE, TOY_STEPS, load_toy_pipeline
from sepme_engine.toy.judge import judge_batch

torch.set_num_threads(1)
N = 2


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline()


def test_blank_prompt_is_the_same_with_and_without_guidance(pipe) -> None:
    # ε_∅ + g·(ε_∅ − ε_∅) = ε_∅: only float round-off of the batched branches separates them
    guided = sample_images(pipe, [""], 0, N, TOY_STEPS, TOY_GUIDANCE)
    plain = sample_images(pipe, [""], 0, N, TOY_STEPS, 1.0)
    assert np.abs(guided - plain).max() <= 1e-3
    assert judge_batch(guided) == judge_batch(plain)


def test_toy_verdict_samples_the_blank_prompt_once_and_unguided(pipe) -> None:
    inc = closed_form_sepme(pipe, "circle", [], SepMEConfig(beta=1e-2), "cpu").increment
    rate1, chance1, passes1 = toy_judged_rates(pipe, inc, "circle", "circle", n=N, seed=3)
    rate2, chance2, passes2 = toy_judged_rates(pipe, inc, "circle", "circle", n=N, seed=3)
    assert passes1 == N * TOY_STEPS * 2 + N * TOY_STEPS  # concept guided + blank unguided
    assert passes2 == N * TOY_STEPS * 2  # the blank prompt's labels are reused
    assert (rate1, chance1) == (rate2, chance2)
    blank = judge_batch(sample_images(pipe, [""], 3, N, TOY_STEPS, TOY_GUIDANCE))
    assert chance1 == sum(v.shape == "circle" for v in blank) / N
