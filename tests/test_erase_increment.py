"""The increment format (delta/increment.py) and the UNet hooks / composition (delta/hooks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sepme_engine.delta import hooks
from sepme_engine.delta.increment import Increment
from sepme_engine.delta.layers import cross_attention_kv, kv_shapes
from sepme_engine.errors import (
    BaseMismatch,
    CorruptEntry,
    InvalidInput,
    NotFound,
    SchemaTooNew,
)
from tests._tiny import shared_tiny
from tests._tol import matmul_bound


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run far faster single-threaded on a shared CPU (no oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


NAMES = ["down.attn2.to_k", "down.attn2.to_v", "mid.attn2.to_k"]


def _factored(seed: int = 0, m: int = 5, d: int = 32) -> Increment:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, m, generator=g))
    coefs = {n: torch.randn(16 + 8 * i, m, generator=g) for i, n in enumerate(NAMES)}
    return Increment.factored(
        basis.T, coefs, {"sepme.method": "sepme", "sepme.preserve": json.dumps(["", "x"])}
    )


def _dense(seed: int = 1) -> Increment:
    g = torch.Generator().manual_seed(seed)
    return Increment.dense(
        {n: torch.randn(16 + 8 * i, 32, generator=g) for i, n in enumerate(NAMES)}
    )


@pytest.mark.parametrize("make", [_factored, _dense])
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, make) -> None:
    inc = make()
    path = tmp_path / "inc.safetensors"
    inc.save(path)
    back = Increment.load(path)
    assert back.kind == inc.kind
    assert back.meta == inc.meta
    assert back.layer_names() == NAMES
    assert back.shapes() == {NAMES[0]: (16, 32), NAMES[1]: (24, 32), NAMES[2]: (32, 32)}
    for key, t in inc.tensors().items():
        assert torch.equal(back.tensors()[key], t), key
    for name in NAMES:
        assert torch.equal(back.delta(name), inc.delta(name))


def test_file_layout(tmp_path: Path) -> None:
    from safetensors import safe_open

    inc = _factored()
    inc.save(tmp_path / "f.safetensors")
    with safe_open(str(tmp_path / "f.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(["basis", *(f"{n}.coef" for n in NAMES)])
        meta = f.metadata()
    assert meta["sepme.schema_version"] == "1"
    assert meta["sepme.format"] == "increment"
    assert meta["sepme.kind"] == "factored"
    assert json.loads(meta["sepme.preserve"]) == ["", "x"]


def test_factored_delta_and_rank() -> None:
    inc = _factored(m=5)
    assert inc.rank() == 5
    d = inc.delta(NAMES[1])
    assert d.dtype == torch.float32 and d.shape == (24, 32)
    ref = inc.coefs[NAMES[1]] @ inc.basis
    # same float32 product, maybe another kernel: within 2·γ_5·|coefs|@|basis| elementwise
    gap = (d.double() - ref.double()).abs()
    assert bool((gap <= 2 * matmul_bound(inc.coefs[NAMES[1]], inc.basis)).all())
    assert int(torch.linalg.matrix_rank(d)) == 5
    dense = Increment.dense({n: inc.delta(n) for n in NAMES})
    assert dense.rank() == 5


def test_schema_too_new(tmp_path: Path) -> None:
    path = tmp_path / "new.safetensors"
    save_file(
        {"x.delta": torch.zeros(2, 2)},
        str(path),
        metadata={"sepme.schema_version": "99", "sepme.format": "increment", "sepme.kind": "dense"},
    )
    with pytest.raises(SchemaTooNew, match="99") as err:
        Increment.load(path)
    assert err.value.hint and "upgrade" in err.value.hint


def test_corrupt_and_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Increment.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CorruptEntry):
        Increment.load(junk)
    inc = _dense()
    good = tmp_path / "good.safetensors"
    inc.save(good)
    raw = bytearray(good.read_bytes())
    (tmp_path / "cut.safetensors").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CorruptEntry):
        Increment.load(tmp_path / "cut.safetensors")
    nan = tmp_path / "nan.safetensors"
    save_file(
        {"x.delta": torch.tensor([[float("nan"), 0.0]])},
        str(nan),
        metadata={"sepme.schema_version": "1", "sepme.format": "increment", "sepme.kind": "dense"},
    )
    with pytest.raises(CorruptEntry, match="non-finite"):
        Increment.load(nan)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CorruptEntry, match="not a sepme increment"):
        Increment.load(plain)


def test_invalid_construction() -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        Increment.dense({"a": torch.zeros(2, 2)}, {"sepme.kind": "factored"})
    with pytest.raises(InvalidInput, match="shape"):
        Increment.factored(torch.zeros(3, 8), {"a": torch.zeros(4, 2)})
    with pytest.raises(InvalidInput, match="non-finite"):
        Increment.dense({"a": torch.full((2, 2), float("inf"))})


def test_sum_deltas_canonical_order_and_mismatch() -> None:
    a, b = _factored(0), _dense(1)
    total = hooks.sum_deltas([a, b])
    assert list(total) == NAMES
    for n in NAMES:
        expected = torch.zeros(a.shapes()[n]) + a.delta(n) + b.delta(n)
        assert torch.equal(total[n], expected)
    partial = Increment.dense({NAMES[2]: torch.ones(32, 32)})
    assert torch.equal(hooks.sum_deltas([partial])[NAMES[2]], torch.ones(32, 32))
    assert hooks.sum_deltas([]) == {}
    bad = Increment.dense({NAMES[0]: torch.zeros(3, 3)})
    with pytest.raises(BaseMismatch):
        hooks.sum_deltas([a, bad])


# ----- hooks on a real (tiny) UNet ------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return shared_tiny("sd1", seed=0, max_length=8)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 16, 16, generator=g),
        torch.tensor([10, 700]),
        torch.randn(2, 8, 32, generator=g),
    )


def _random_increment(unet, seed: int, scale: float = 0.05) -> Increment:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(32, 6, generator=g))
    return Increment.factored(
        basis.T, {n: scale * torch.randn(s[0], 6, generator=g) for n, s in kv_shapes(unet).items()}
    )


def test_layer_names(pipe) -> None:
    names = [n for n, _ in cross_attention_kv(pipe.unet)]
    assert names == sorted(names) and len(names) == 8
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    assert all(n.endswith((".attn2.to_k", ".attn2.to_v")) for n in names)


def test_attach_detach_restores_modules_exactly(pipe) -> None:
    unet = pipe.unet
    before = dict(cross_attention_kv(unet))
    keys = list(unet.state_dict())
    x, t, e = _inputs()
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=e).sample
        layers = hooks.attach(unet)
        assert all(isinstance(m, hooks.DeltaLinear) for m in layers.values())
        assert list(unet.state_dict()) == keys  # wrappers share the parameters
        assert torch.equal(unet(x, t, encoder_hidden_states=e).sample, ref)  # no terms
        hooks.set_increments(unet, [_random_increment(unet, 0)])
        changed = unet(x, t, encoder_hidden_states=e).sample
        assert (changed - ref).abs().max() > 1e-3
        with hooks.deltas_enabled(unet, False):
            assert torch.equal(unet(x, t, encoder_hidden_states=e).sample, ref)
        hooks.detach(unet)
    after = dict(cross_attention_kv(unet))
    assert all(after[n] is before[n] for n in before)
    assert not hooks.delta_layers(unet)
    with torch.no_grad():
        assert torch.equal(unet(x, t, encoder_hidden_states=e).sample, ref)


def test_hooks_match_in_place_merge_and_restore_exactly(pipe) -> None:
    unet = pipe.unet
    incs = [_random_increment(unet, 1), _random_increment(unet, 2)]
    dense = Increment.dense({n: incs[0].delta(n) for n in incs[0].layer_names()})
    x, t, e = _inputs(1)
    saved = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=e).sample
        with hooks.attached(unet, incs):
            hooked = unet(x, t, encoder_hidden_states=e).sample
        with hooks.attached(unet, [dense, incs[1]]):
            hooked_dense = unet(x, t, encoder_hidden_states=e).sample
        with hooks.apply_deltas_inplace(unet, hooks.sum_deltas(incs)):
            merged = unet(x, t, encoder_hidden_states=e).sample
            name = incs[0].layer_names()[0]
            w = unet.get_submodule(name).weight
            d = torch.zeros(w.shape) + incs[0].delta(name) + incs[1].delta(name)
            assert torch.equal(w, saved[name + ".weight"].float() + d)
    assert (hooked - ref).abs().max() > 1e-3
    # hooked computes x·Wᵀ + x·ΔWᵀ, merged x·(W+ΔW)ᵀ: both float32, differing by γ_K round-off
    # (K ≤ 64 channels ≈ 4e-6 relative) per layer, compounded through the UNet; scaled by the
    # output's magnitude rather than a fixed atol
    tol = 1e-4 * float(merged.abs().max())
    assert torch.allclose(hooked, merged, atol=tol, rtol=0)
    assert torch.allclose(hooked_dense, merged, atol=tol, rtol=0)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_in_place_restores_after_an_exception(pipe) -> None:
    unet = pipe.unet
    saved = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.apply_deltas_inplace(unet, hooks.sum_deltas([_random_increment(unet, 3, 1.0)])):
            raise RuntimeError("boom")
    assert all(torch.equal(v, saved[k]) for k, v in unet.state_dict().items())


def test_mismatched_increment_is_refused(pipe) -> None:
    with pytest.raises(BaseMismatch):
        with hooks.apply_deltas_inplace(pipe.unet, {"nope.attn2.to_k": torch.zeros(2, 2)}):
            pass
    name = cross_attention_kv(pipe.unet)[0][0]
    with pytest.raises(BaseMismatch):
        with hooks.apply_deltas_inplace(pipe.unet, {name: torch.zeros(2, 2)}):
            pass
    wrong = Increment.factored(torch.eye(16)[:3], {name: torch.zeros(32, 3)})
    with pytest.raises(BaseMismatch):
        with hooks.attached(pipe.unet, [wrong]):
            pass
    assert not hooks.delta_layers(pipe.unet)
