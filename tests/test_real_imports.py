"""Checkpoints users hold in other layouts, hub ids, and sepme's own exports imported back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine import bases
from sepme_engine.errors import UnsupportedModel
from sepme_engine.models.arch import cross_attention_kv
from sepme_engine.models.configs import pipeline_configs
from sepme_engine.models.detect import inspect_source
from sepme_engine.models.ldm_keys import CLIP_PREFIX, OPENCLIP_PREFIX, pipeline_to_ldm
from sepme_engine.models.load import load_pipeline
from sepme_engine.store import Store
from tests._tiny import shared_pipeline, shared_tiny

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def real(arch: str) -> Any:
    torch.set_num_threads(1)
    return shared_pipeline("real", arch=arch, seed=2, max_length=8)


def assert_same_weights(a: Any, b: Any) -> None:
    for comp in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        assert sa.keys() == sb.keys(), comp
        assert all(torch.equal(sa[k], sb[k]) for k in sa), comp


def write_renamed(pipe: Any, arch: str, path: Path, old: str, new: str) -> Path:
    """An LDM file whose text encoder sits under `new` instead of the standard `old` prefix."""
    sd = {
        (new + k[len(old) :] if k.startswith(old) else k): v.contiguous()
        for k, v in pipeline_to_ldm(pipe, arch).items()
    }
    assert any(k.startswith(new) for k in sd)
    save_file(sd, str(path), metadata={"sepme.configs": json.dumps(pipeline_configs(pipe))})
    return path


def test_old_compvis_sd1_text_layout_imports_and_loads(tmp_path: Path, store: Store) -> None:
    # cond_stage_model.transformer.{embeddings,encoder,final_layer_norm}.* (no text_model.)
    pipe = real("sd1")
    path = write_renamed(
        pipe, "sd1", tmp_path / "old.safetensors", CLIP_PREFIX, "cond_stage_model.transformer."
    )
    info = inspect_source(path)
    assert (info.arch, info.text_prefix) == ("sd1", "cond_stage_model.transformer.")
    res = run("base", "add", "old", str(path))
    assert res.exit_code == 0, res.output
    assert_same_weights(pipe, bases.load_base(store, "old"))


def test_sgm_layout_sd2_is_not_taken_for_sdxl(tmp_path: Path, store: Store) -> None:
    # Stability's generative-models layout of SD 2.1-Turbo: conditioner.embedders.0.model.*
    pipe = real("sd2")
    path = write_renamed(
        pipe,
        "sd2",
        tmp_path / "turbo.safetensors",
        OPENCLIP_PREFIX,
        "conditioner.embedders.0.model.",
    )
    info = inspect_source(path)
    assert (info.family, info.text_prefix) == ("sd2", "conditioner.embedders.0.model.")
    assert [[n, list(s)] for n, s in info.cross_attn_layers] == [
        [n, list(m.weight.shape)] for n, m in cross_attention_kv(pipe.unet)
    ]
    assert_same_weights(pipe, load_pipeline(path))
    res = run("base", "add", "turbo", str(path))
    assert res.exit_code == 0, res.output
    # an SDXL bigG embedder without SDXL's CLIP ViT-L one is refused with a clear message
    sd = {"conditioner.embedders.1.model.token_embedding.weight": torch.zeros(2, 2)}
    with safe_open(str(path), "pt") as f:
        sd.update({k: f.get_tensor(k) for k in f.keys()})
    save_file(sd, str(tmp_path / "xl.safetensors"))
    with pytest.raises(UnsupportedModel, match="SDXL"):
        inspect_source(tmp_path / "xl.safetensors")


def test_topology_from_a_key_subset_is_refused() -> None:
    from sepme_engine.models.ldm_keys import ldm_unet_to_diffusers

    keys = [
        k for k in pipeline_to_ldm(real("sd1"), "sd1") if k.startswith("model.diffusion_model.")
    ]
    full = ldm_unet_to_diffusers(keys)
    k = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    assert full[k] == "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    with pytest.raises(ValueError, match="layers per block"):
        ldm_unet_to_diffusers([x for x in keys if ".attn2.to_k." in x])


# --- hub ids -----------------------------------------------------------------------------------


def _fake_cache(root: Path, repo_id: str, pipe: Any) -> None:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    pipe.save_pretrained(repo / "snapshots" / commit)


def test_base_add_from_a_hub_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: Store
) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = shared_tiny("sd1", seed=4, max_length=8)
    _fake_cache(tmp_path / "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", pipe)
    _fake_cache(tmp_path / "hub", "someone/tiny-sd", pipe)
    for args in (("sd15",), ("mine", "someone/tiny-sd")):
        res = run("base", "add", *args, "--json")
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert (data["source_type"], data["linked"]) == ("hub", True)
        assert_same_weights(pipe, bases.load_base(store, args[0]))
    # a hub id that is not cached, offline: a clear error, nothing stored
    res = run("base", "add", "nope", "someone/missing")
    assert res.exit_code == 1 and "offline" in res.stderr
    assert not store.has_manifest("bases", "nope")


# --- the toy profile survives an export and a re-import ------------------------------------------


@pytest.mark.parametrize("fmt", ["ldm", "diffusers"])
def test_reimported_toy_export_keeps_the_toy_profile(
    fmt: str, tmp_path: Path, store: Store
) -> None:
    out = tmp_path / ("toy.safetensors" if fmt == "ldm" else "toy-folder")
    res = run("export", str(out), "--base", "toy", "--format", fmt)
    assert res.exit_code == 0, res.output
    if fmt == "diffusers":
        index = json.loads((out / "model_index.json").read_text())
        assert "_name_or_path" not in index and index["_sepme"] == {"profile": "toy"}
        assert str(bases.toy_folder()) not in json.dumps(index)
    res = run("base", "add", "again", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["profile"] == "toy"
    assert bases.get_base(store, "again").profile == "toy"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_one_tensor_read_without_torch_matches_torch(dtype: torch.dtype, tmp_path: Path) -> None:
    from sepme_engine.models.detect import safetensors_tensor_values

    t = (torch.randn(320, generator=torch.Generator().manual_seed(0)) * 0.2).to(dtype)
    save_file({"a": torch.zeros(3), "b": t}, str(tmp_path / "x.safetensors"))
    values = safetensors_tensor_values(tmp_path / "x.safetensors", "b")
    assert values == t.float().tolist()  # exact: every format widens to float32 exactly
    assert safetensors_tensor_values(tmp_path / "x.safetensors", "missing") is None
