"""Export through the CLI, proven by the loaders other programs use (diffusers, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine import bases
from sepme_engine.compose import composition_deltas
from sepme_engine.store import Store
from tests._fixtures import save_diffusers, tiny
from tests._tol import EPS32

runner = CliRunner()
FAST = ["--steps", "12", "--images", "1", "--lr", "0.1", "--beta", "0.01"]


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(params=["sd1", "sd2"])
def erased_base(request, tmp_path: Path, store: Store) -> tuple[str, str]:
    arch = request.param
    folder = save_diffusers(tiny(arch, max_length=8), tmp_path / "pipe")
    assert run("base", "add", "tiny", str(folder)).exit_code == 0
    assert run("base", "use", "tiny").exit_code == 0
    (store.root / "config.toml").write_text("[erase]\nimage_steps = 2\n", encoding="utf-8")
    res = run("erase", "cat", "dog", *FAST)
    assert res.exit_code == 0, res.output
    return "tiny", arch


def composed_unet(store: Store, names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    info = bases.get_base(store, "tiny")
    pipe = bases.load_base(store, "tiny")
    d = composition_deltas(store, info, names)
    sd = pipe.unet.state_dict()
    return {
        k: ((v.float() + d[k[: -len(".weight")]]) if k[: -len(".weight")] in d else v).to(dtype)
        for k, v in sd.items()
    }


def test_export_ldm_loads_in_diffusers_single_file(
    erased_base, store: Store, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    from sepme_engine.models.configs import CONFIGS_METADATA_KEY, write_config_dir

    out = tmp_path / "merged.safetensors"
    res = run("export", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["format"] == "ldm"
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.") for k in keys)
    assert "cat" in meta["modelspec.description"] and "dog" in meta["modelspec.description"]
    assert meta["sepme.base_digest"] == bases.get_base(store, "tiny").base_digest
    assert [i["concept"] for i in json.loads(meta["sepme.increments"])] == ["cat", "dog"]
    cfg = write_config_dir(json.loads(meta[CONFIGS_METADATA_KEY]), tmp_path / "cfg")
    loaded = StableDiffusionPipeline.from_single_file(
        str(out), config=str(cfg), local_files_only=True, torch_dtype=torch.float16
    )
    want = composed_unet(store, ["cat", "dog"], torch.float16)
    got = loaded.unet.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k

    # and sepme imports its own export back as a base
    res = run("base", "add", "merged", str(out))
    assert res.exit_code == 0, res.output
    again = bases.load_base(store, "merged").unet.state_dict()
    assert all(torch.equal(want[k].float(), again[k].float()) for k in want)

    res = run("export", str(out))
    assert res.exit_code == 1 and "--force" in res.stderr


def test_export_variant_diffusers_folder(erased_base, store: Store, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    assert run("compose", "--restore", "dog", "--name", "onlycat").exit_code == 0
    out = tmp_path / "folder"
    res = run("export", str(out), "--variant", "onlycat", "--dtype", "fp32")
    assert res.exit_code == 0, res.output
    loaded = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    want = composed_unet(store, ["cat"], torch.float32)
    got = loaded.unet.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_export_lora_fuses_to_the_composition(erased_base, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "erase.safetensors"
    res = run("export", str(out), "--format", "lora", "--dtype", "fp32", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["relative_error"] < 1e-5  # exact factors: float32 round-off, γ_k·√k ≪ 1e-5
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
        in keys
    )
    assert meta["ss_network_module"] == "networks.lora"
    pipe = bases.load_base(store, "tiny")
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights, drops the peft wrappers
    want = composed_unet(store, ["cat", "dog"], torch.float32)
    got = pipe.unet.state_dict()
    for k, w in want.items():
        if ".attn2.to_k" in k or ".attn2.to_v" in k:
            # fused W + up@down vs (W + ΔW) in float32: each side rounds the add once
            # (≤ eps32·|W|) and ΔW ≪ W (β-scaled), so 8·eps32·max|W| bounds every element
            assert torch.allclose(got[k], w, rtol=0, atol=8 * EPS32 * float(w.abs().max())), k

    res = run(
        "export", str(tmp_path / "r1.safetensors"), "--format", "lora", "--rank", "1", "--json"
    )
    assert res.exit_code == 0
    assert json.loads(res.stdout)["relative_error"] > 0


def test_export_failure_leaves_nothing(
    erased_base, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sepme_engine.export.safetensors_writer as writer

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_raw_bytes", boom)
    out = tmp_path / "x.safetensors"
    res = run("export", str(out))
    assert res.exit_code == 130
    assert list(tmp_path.glob("x*")) == [] and not any(
        p.name.endswith(".incomplete") for p in tmp_path.iterdir()
    )


def test_export_bad_input(erased_base, tmp_path: Path) -> None:
    res = run("export", str(tmp_path / "a.ckpt"), "--format", "ldm")
    assert res.exit_code == 1 and ".safetensors" in res.stderr
    res = run("export", str(tmp_path / "nodir" / "a.safetensors"))
    assert res.exit_code == 1 and "does not exist" in res.stderr
    res = run("export", str(tmp_path / "a.safetensors"), "--variant", "nope")
    assert res.exit_code == 1 and "no variant" in res.stderr


def test_increment_of_another_base_is_refused(erased_base, store: Store, tmp_path: Path) -> None:
    key = "tiny/cat"
    data = store.read_manifest("increments", key)
    data["base_digest"] = "sha256:" + "0" * 64
    store.write_manifest("increments", key, data)
    res = run("export", str(tmp_path / "m.safetensors"))
    assert (
        res.exit_code == 1 and "base mismatch" in res.stderr and "sha256:000000000000" in res.stderr
    )
    assert not (tmp_path / "m.safetensors").exists()


def _hash_ok(path: Path) -> bool | None:
    """None: no modelspec.hash_sha256; else whether it is the SHA-256 of the tensor data."""
    import hashlib

    with safe_open(str(path), "pt") as f:
        value = f.metadata().get("modelspec.hash_sha256")
    if value is None:
        return None
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return bool(value == "0x" + hashlib.sha256(raw[8 + n :]).hexdigest())


def test_export_hash_default_per_format_and_flags(erased_base, tmp_path: Path) -> None:
    ldm, ldm_h = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    lora, lora_n = tmp_path / "c.safetensors", tmp_path / "d.safetensors"
    assert run("export", str(ldm)).exit_code == 0
    assert run("export", str(ldm_h), "--hash").exit_code == 0
    assert run("export", str(lora), "--format", "lora").exit_code == 0
    assert run("export", str(lora_n), "--format", "lora", "--no-hash").exit_code == 0
    assert _hash_ok(ldm) is None  # single files: off by default (it costs as much as the write)
    assert _hash_ok(ldm_h) is True
    assert _hash_ok(lora) is True  # LoRAs: on by default
    assert _hash_ok(lora_n) is None
    # apart from the hash, the single files are the same bytes' worth of tensors
    with safe_open(str(ldm), "pt") as f, safe_open(str(ldm_h), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        k = next(k for k in f.keys() if "attn2.to_k" in k)
        assert torch.equal(f.get_tensor(k), g.get_tensor(k))
    folder = tmp_path / "folder"
    res = run("export", str(folder), "--format", "diffusers", "--hash")
    assert res.exit_code == 1 and "no modelspec hash" in res.stderr and "--hash" in res.stderr
    assert (
        not folder.exists()
        and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )
