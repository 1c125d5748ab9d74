"""The composition rule, stated once in `delta/composition.py`: D = Σ ΔW_i in float32 from zeros
in the given order, W' = (W.float() + D).to(dtype); the in-place merge writes exactly that and
restores the base bit-exactly."""

from __future__ import annotations

import torch

from sepme_engine.delta import hooks
from sepme_engine.delta.composition import compose_source, compose_weight, sum_deltas
from sepme_engine.delta.increment import Increment
from sepme_engine.delta.layers import kv_shapes
from tests._tiny import make_tiny_pipeline


def _dense(shapes: dict[str, tuple[int, int]], seed: int) -> Increment:
    g = torch.Generator().manual_seed(seed)
    return Increment.dense({k: torch.randn(s, generator=g) * 0.01 for k, s in shapes.items()})


def test_sum_is_zeros_plus_each_delta_in_order() -> None:
    shapes = {"a.attn2.to_k": (5, 3), "b.attn2.to_v": (4, 3)}
    incs = [_dense(shapes, s) for s in (1, 2, 3)]
    got = sum_deltas(incs)
    assert list(got) == sorted(shapes)
    for name in shapes:
        want = torch.zeros(shapes[name])
        for inc in incs:
            want = want + inc.delta(name)
        assert torch.equal(got[name], want)
    assert hooks.sum_deltas is sum_deltas  # the old import path is the same function


def test_compose_weight_casts_once_after_the_float32_sum() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g).to(torch.bfloat16)
    d = torch.randn(6, 4, generator=g) * 1e-3
    assert torch.equal(compose_weight(w, d, torch.float16), (w.float() + d).to(torch.float16))
    assert torch.equal(compose_source(w, d), w.float() + d)
    assert compose_source(w, None) is w  # no copy without a delta
    assert torch.equal(compose_weight(w, None, torch.float32), w.float())
    ids = torch.arange(4)
    assert compose_weight(ids, None, torch.float16) is ids  # buffers keep their dtype


def test_in_place_merge_writes_the_rule_and_restores() -> None:
    torch.set_num_threads(1)
    unet = make_tiny_pipeline("sd1", seed=2).unet.to(torch.float16)
    shapes = kv_shapes(unet)
    deltas = sum_deltas([_dense(shapes, 4), _dense(shapes, 5)])
    mods = dict(unet.named_modules())
    before = {n: mods[n].weight.detach().clone() for n in shapes}
    with hooks.apply_deltas_inplace(unet, deltas):
        for n, d in deltas.items():
            assert torch.equal(mods[n].weight, compose_weight(before[n], d, torch.float16))
    for n in shapes:
        assert torch.equal(mods[n].weight, before[n])
