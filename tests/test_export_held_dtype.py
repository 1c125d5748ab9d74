"""An fp16 (bf16) base is exported from a model held in its own dtype, not upcast to float32:
half the memory (an SDXL base: 7 GB instead of 14), and the same bytes as from float32, since
fp16 -> float32 is exact and the composition upcasts each weight that has a delta."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import sepme_engine.export.single_file as single_file
from sepme_engine import bases
from sepme_engine.compose import composition_deltas, selection
from sepme_engine.delta.increment import Increment
from sepme_engine.export.run import export
from sepme_engine.increments import save_increment
from sepme_engine.store import Store
from tests._fixtures import save_diffusers, save_single_file, tiny


def _add_increment(store: Store, info: Any) -> None:
    layers = dict(info.cross_attn_layers)
    d_in = next(iter(layers.values()))[1]
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(d_in, 4, generator=g))[0].T
    coefs = {k: torch.randn(s[0], 4, generator=g) * 1e-2 for k, s in layers.items()}
    save_increment(
        store,
        info,
        "cat",
        Increment.factored(basis, coefs),
        prompt="cat",
        method="test",
        m_k=4,
        iterations=0,
        stop_reason="test",
        preserve_prompts=[],
        settings={},
        stats={},
    )


@pytest.fixture
def half_base(store: Store, tmp_path: Path) -> Any:
    src = save_single_file(
        copy.deepcopy(tiny("sd1")).to(torch.float16), "sd1", tmp_path / "half.safetensors"
    )
    info = bases.add_base(store, "half", str(src), link=True)
    _add_increment(store, info)
    return info


def test_stored_float_dtype_of_single_files_and_folders(store: Store, tmp_path: Path) -> None:
    pipe = copy.deepcopy(tiny("sd1"))
    f32 = save_single_file(pipe, "sd1", tmp_path / "f32.safetensors")
    assert bases.stored_float_dtype(store, bases.add_base(store, "f32", str(f32))) is None
    pipe.to(torch.bfloat16)
    bf = save_single_file(pipe, "sd1", tmp_path / "bf16.safetensors")
    assert bases.stored_float_dtype(store, bases.add_base(store, "bf", str(bf))) == "bf16"
    pipe.to(torch.float16)
    folder = save_diffusers(pipe, tmp_path / "half")
    assert bases.stored_float_dtype(store, bases.add_base(store, "dir16", str(folder))) == "fp16"
    pipe.vae.to(torch.float32)  # mixed: fp16 UNet and text encoder, float32 VAE
    mixed = save_diffusers(pipe, tmp_path / "mixed")
    assert bases.stored_float_dtype(store, bases.add_base(store, "mixed", str(mixed))) is None


def test_export_holds_an_fp16_base_in_fp16_and_writes_what_float32_would(
    store: Store,
    half_base: Any,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = single_file.export_single_file
    held: list[torch.dtype] = []

    def spy(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        held.append(next(pipe.unet.parameters()).dtype)
        return real(pipe, *args, **kwargs)

    monkeypatch.setattr(single_file, "export_single_file", spy)
    out = tmp_path / "from16.safetensors"
    export(store, out, base="half")
    assert held == [torch.float16]
    assert "float16" not in capfd.readouterr().err  # no "fp16 cannot run on cpu" warning

    pipe32 = bases.load_base(store, "half", dtype=torch.float32)
    deltas = composition_deltas(store, half_base, selection(store, half_base))
    assert deltas  # the to_k/to_v weights do change
    ref = tmp_path / "from32.safetensors"
    real(pipe32, deltas, ref, arch="sd1", dtype="fp16")
    with safe_open(str(out), "pt") as a, safe_open(str(ref), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
