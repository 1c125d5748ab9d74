"""LoRA export: kohya keys and metadata, exact factorisation, SVD truncation with the reported
error, and diffusers' load_lora_weights + fuse_lora giving back the composition."""

from __future__ import annotations

import copy
import itertools
import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sepme_engine.delta.hooks import sum_deltas as compose_deltas
from sepme_engine.delta.increment import Increment
from sepme_engine.delta.layers import kv_shapes
from sepme_engine.errors import AlreadyExists, InvalidInput
from sepme_engine.export.lora import export_lora, lora_key
from tests._tiny import shared_tiny
from tests._tol import matmul_bound

BETA = 1e-4


@cache
def _shapes() -> dict[str, tuple[int, int]]:
    torch.set_num_threads(1)
    return kv_shapes(shared_tiny("sd1", seed=5).unet)


def _factored(m: int, seed: int, scale: float = 0.01) -> Increment:
    g = torch.Generator().manual_seed(seed)
    d_in = next(iter(_shapes().values()))[1]
    basis = torch.linalg.qr(torch.randn(d_in, m, generator=g))[0].T
    coefs = {k: torch.randn(s[0], m, generator=g) * scale for k, s in _shapes().items()}
    return Increment.factored(basis, coefs)


def _dense(seed: int, layers: int = 4, scale: float = 0.01) -> Increment:
    g = torch.Generator().manual_seed(seed)
    items = list(_shapes().items())[:layers]
    return Increment.dense({k: torch.randn(s, generator=g) * scale for k, s in items})


def _fused_error(path: Path, incs: dict[str, Increment]) -> tuple[float, float, float]:
    """Diffusers' fused weights vs W + Σ ΔW: (overall relative error, worst layer's relative
    error, worst layer's fp32 round-off bound). The fused weight is fp32, so adding a small ΔW
    to W costs up to ~eps32·‖W‖; the bound is 4·2⁻²⁴·‖W‖/‖ΔW‖."""
    pipe = copy.deepcopy(shared_tiny("sd1", seed=5))  # load_lora_weights + fuse change it
    mods = dict(pipe.unet.named_modules())
    base = {n: mods[n].weight.detach().clone() for n in _shapes()}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()
    mods = dict(pipe.unet.named_modules())
    deltas = compose_deltas(incs.values())
    num = den = worst = bound = 0.0
    for n, d in deltas.items():
        err = float((mods[n].weight.detach().double() - (base[n].double() + d.double())).norm())
        dn = float(d.double().norm())
        num, den = num + err**2, den + dn**2
        worst = max(worst, err / dn)
        bound = max(bound, 4 * 2**-24 * float(base[n].norm()) / dn)
    for n in set(_shapes()) - set(deltas):  # untouched layers stay bit-identical
        assert torch.equal(mods[n].weight.detach(), base[n])
    return math.sqrt(num / den), worst, bound


def assert_product_close(up: torch.Tensor, down: torch.Tensor, expected: torch.Tensor) -> None:
    """up @ down equals `expected` (a sum of factored ΔW) up to float32 round-off.

    Bound: up @ down sums k float32 products after one rounding each of the balancing scale
    (γ_{k+2}·|up|@|down|); `expected` sums the increments' own shorter products and adds them
    (≤ γ_{k+2} of the same magnitudes). Any summation order (any SIMD path, any
    ATEN_CPU_CAPABILITY) stays within 2·γ_{k+2}·|up|@|down|, elementwise."""
    gap = (up @ down).double() - expected.double()
    assert bool((gap.abs() <= 2 * matmul_bound(up, down, extra=2)).all()), float(gap.abs().max())


def _factors(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    incs = {"van-gogh": _factored(3, 1), "snoopy": _factored(2, 2)}
    out = tmp_path / "erase.safetensors"
    export_lora(incs, out, dtype="fp32")
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    with safe_open(str(out), framework="pt") as f:
        up, down = (f.get_tensor(f"{lora_key(name)}.lora_{s}.weight") for s in ("up", "down"))
    return up, down, incs["van-gogh"].delta(name) + incs["snoopy"].delta(name)


def test_product_tolerance_holds_for_every_summation_order(tmp_path: Path) -> None:
    # A CPU's SIMD path changes the order of the k = 5 terms. Every order must pass the
    # assertion the export test makes (the old atol=1e-10 failed 78 of these 120 orders).
    up, down, expected = _factors(tmp_path)
    orders = list(itertools.permutations(range(up.shape[1])))
    assert len(orders) == 120
    differ = 0
    for order in orders:
        acc = torch.zeros_like(expected)
        for i in order:
            acc = acc + torch.outer(up[:, i], down[i])
        gap = (acc.double() - expected.double()).abs()
        assert bool((gap <= 2 * matmul_bound(up, down, extra=2)).all()), order
        differ += not torch.equal(acc, up @ down)
    assert differ > 0  # the orders really do round differently


def test_exact_lora_keys_metadata_and_fused_weights(tmp_path: Path) -> None:
    incs = {"van-gogh": _factored(3, 1), "snoopy": _factored(2, 2)}
    out = tmp_path / "erase.safetensors"
    rep = export_lora(incs, out, dtype="fp32", metadata={"sepme.version": "0.1.0"})
    assert rep.format == "lora" and rep.rank == 5  # Σm, no SVD
    # exact factors: only float32 round-off of 5-term sums, ‖·‖-relative ≤ γ_7 ≈ 4.2e-7 < 1e-6
    assert rep.relative_error is not None and rep.relative_error < 1e-6
    assert rep.max_layer_relative_error is not None and rep.max_layer_relative_error < 1e-6
    assert rep.bytes_written == out.stat().st_size

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert lora_key(name) == key
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        down, up, alpha = (
            f.get_tensor(f"{key}.{s}") for s in ("lora_down.weight", "lora_up.weight", "alpha")
        )
    assert keys == {
        f"{lora_key(n)}.{s}"
        for n in _shapes()
        for s in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    d_out, d_in = _shapes()[name]
    assert down.shape == (5, d_in) and up.shape == (d_out, 5) and alpha.ndim == 0
    assert float(alpha) == 5.0
    # up @ down is the sum of the two increments' ΔW on that layer
    expected = incs["van-gogh"].delta(name) + incs["snoopy"].delta(name)
    assert_product_close(up, down, expected)
    # balanced factors: neither holds the tiny β scale alone
    assert up.abs().max() < 100 * down.abs().max() and down.abs().max() < 100 * up.abs().max()
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "5"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert "van-gogh" in meta["modelspec.description"]
    assert meta["sepme.version"] == "0.1.0"

    overall, worst, roundoff = _fused_error(out, incs)
    assert overall <= rep.relative_error + roundoff
    assert worst <= rep.max_layer_relative_error + roundoff


def test_fp16_lora_error_is_reported_and_matches_the_file(tmp_path: Path) -> None:
    # tiny β-sized coefficients: only balanced factors keep them out of fp16's subnormal range
    incs = {"a": _factored(4, 3, scale=0.05 * BETA)}
    rep = export_lora(incs, tmp_path / "h.safetensors", dtype="fp16")
    assert rep.dtype == "fp16"
    # fp16 factors: relative error ≈ √2·u16 ≈ 7e-4 for each rounded factor's product, at most
    # γ_6 in fp16 (≈ 3e-3 worst case); well above float32 round-off (1e-5), so it is fp16's
    assert rep.relative_error is not None and 1e-5 < rep.relative_error < 1e-3
    err2 = tot2 = 0.0
    with safe_open(str(rep.path), framework="pt") as f:
        for n in _shapes():
            up = f.get_tensor(f"{lora_key(n)}.lora_up.weight")
            down = f.get_tensor(f"{lora_key(n)}.lora_down.weight")
            assert up.dtype == down.dtype == torch.float16
            d = incs["a"].delta(n).double()
            err2 += float((up.double() @ down.double() - d).square().sum())
            tot2 += float(d.square().sum())
    # both sides are float64 sums over the same fp16 values: they agree to ~n·eps64, and the
    # report is printed/stored as a float64 (rel=1e-6 leaves room for a float32 intermediate)
    assert math.sqrt(err2 / tot2) == pytest.approx(rep.relative_error, rel=1e-6)


def test_dense_increments_are_factored_by_svd(tmp_path: Path) -> None:
    incs = {"a": _factored(2, 4), "esd": _dense(5, layers=3)}
    rep = export_lora(incs, tmp_path / "d.safetensors", dtype="fp32")
    d_min = min(min(s) for s in _shapes().values())
    assert rep.rank == d_min  # a dense ΔW has full rank; capped at min(d_out, d_in)
    assert rep.layer_ranks is not None
    assert min(rep.layer_ranks.values()) == 2  # layers without the dense increment
    # the SVD drops singular values below eps32·max(d)·s₀ (float32 noise), so the error is
    # float32 round-off of a sum of at most d_min = 32 terms: γ_34 ≈ 2e-6 < 1e-5
    assert rep.relative_error is not None and rep.relative_error < 1e-5
    overall, worst, roundoff = _fused_error(rep.path, incs)
    assert rep.max_layer_relative_error is not None
    assert overall <= rep.relative_error + roundoff
    assert worst <= rep.max_layer_relative_error + roundoff


def test_truncated_rank_reports_the_svd_error(tmp_path: Path) -> None:
    incs = {"a": _factored(4, 6), "b": _factored(3, 7)}
    rep = export_lora(incs, tmp_path / "r.safetensors", rank=3, dtype="fp32")
    assert rep.rank == 3
    deltas = compose_deltas(incs.values())
    # Eckart-Young: the best rank-3 error is the tail of the singular values
    tail2 = total2 = 0.0
    worst = 0.0
    for d in deltas.values():
        s = torch.linalg.svdvals(d.double())
        t2, n2 = float(s[3:].square().sum()), float(s.square().sum())
        tail2, total2 = tail2 + t2, total2 + n2
        worst = max(worst, math.sqrt(t2 / n2))
    # float64 SVD vs the error of float32 factors: the factors' rounding adds ≈ eps32·‖ΔW‖ to
    # a tail of ≥ 5 % of ‖ΔW‖ (asserted below), i.e. ≤ 2.4e-6 relative; rel=1e-4 is that ×40
    assert rep.relative_error == pytest.approx(math.sqrt(tail2 / total2), rel=1e-4)
    assert rep.max_layer_relative_error == pytest.approx(worst, rel=1e-4)
    assert 0.05 < rep.relative_error < 1
    overall, _, roundoff = _fused_error(rep.path, incs)
    assert abs(overall - rep.relative_error) <= roundoff
    # a rank at least the exact one changes nothing
    exact = export_lora(incs, tmp_path / "r7.safetensors", rank=7, dtype="fp32")
    # exact again: round-off of 7-term float32 sums, γ_9 ≈ 5.4e-7 < 1e-6
    assert exact.rank == 7 and exact.relative_error is not None and exact.relative_error < 1e-6


def test_lora_refusals(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    with pytest.raises(InvalidInput):
        export_lora({}, out)
    with pytest.raises(InvalidInput):
        export_lora({"a": _factored(2, 1)}, out, rank=0)
    zero = Increment.factored(
        torch.eye(2, 32), {k: torch.zeros(s[0], 2) for k, s in _shapes().items()}
    )
    with pytest.raises(InvalidInput, match="zero"):
        export_lora({"z": zero}, out)
    assert not out.exists()
    export_lora({"a": _factored(2, 1)}, out)
    with pytest.raises(AlreadyExists):
        export_lora({"a": _factored(2, 1)}, out)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


@pytest.mark.parametrize(
    ("arch", "architecture", "version", "v2", "vparam", "reso", "pred"),
    [
        ("sd1", "stable-diffusion-v1/lora", "sd_v1", "False", "False", "512x512", "epsilon"),
        ("sd2", "stable-diffusion-v2-512/lora", "sd_v2", "True", "False", "512x512", "epsilon"),
        ("sd2-v", "stable-diffusion-v2-768-v/lora", "sd_v2_v", "True", "True", "768x768", "v"),
    ],
)
def test_lora_metadata_is_what_kohya_writes(
    tmp_path: Path,
    arch: str,
    architecture: str,
    version: str,
    v2: str,
    vparam: str,
    reso: str,
    pred: str,
) -> None:
    # kohya sd-scripts: sai_model_spec.determine_architecture appends "/lora";
    # model_util.get_model_version_str_for_sd1_sd2 gives sd_v1 / sd_v2 / sd_v2_v; every value
    # is a string, and ss_network_args (when present) a JSON object of strings
    import hashlib

    out = tmp_path / "l.safetensors"
    export_lora({"a": _factored(2, 1)}, out, arch=arch, dtype="fp16")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == architecture
    assert meta["modelspec.implementation"] == "diffusers"
    assert (meta["modelspec.resolution"], meta["modelspec.prediction_type"]) == (reso, pred)
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_v_parameterization"]) == (
        version,
        v2,
        vparam,
    )
    args = json.loads(meta.get("ss_network_args", "{}"))
    assert isinstance(args, dict) and all(isinstance(v, str) for v in args.values())
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(raw[8 + n :]).hexdigest()
