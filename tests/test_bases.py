"""Importing bases through the CLI: diffusers folders and single files, reloaded tensor by tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine import bases
from sepme_engine.store import Store
from tests._fixtures import save_diffusers, save_single_file, state_of, tiny

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_same_weights(a, b) -> None:
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sd2-v"])
def test_import_diffusers_and_single_file_roundtrip(
    arch: str, tmp_path: Path, store: Store
) -> None:
    pipe = tiny(arch)
    folder = save_diffusers(pipe, tmp_path / "pipe")
    single = save_single_file(pipe, arch, tmp_path / "model.safetensors")

    res = run("base", "add", "tinyfolder", str(folder), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["arch"] == arch and data["source_type"] == "diffusers" and not data["linked"]
    assert data["prediction_type"] == ("v_prediction" if arch == "sd2-v" else "epsilon")
    assert data["text_width"] == 32 and len(data["cross_attn_layers"]) == 8

    res = run("base", "add", "tinyfile", str(single))
    assert res.exit_code == 0, res.output
    info = bases.get_base(store, "tinyfile")
    assert info.source_type == "single_file" and info.arch == arch
    assert (
        info.base_digest
        == "sha256:" + __import__("hashlib").sha256(single.read_bytes()).hexdigest()
    )

    # the source can go away: the store holds a copy
    single.unlink()
    for name in ("tinyfolder", "tinyfile"):
        loaded = bases.load_base(store, name)
        assert_same_weights(pipe, loaded)
        assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
        assert loaded.tokenizer("a cat").input_ids == pipe.tokenizer("a cat").input_ids


def test_link_keeps_reference_and_reports_missing_source(tmp_path: Path, store: Store) -> None:
    pipe = tiny("sd1")
    single = save_single_file(pipe, "sd1", tmp_path / "model.safetensors")
    res = run("base", "add", "linked", str(single), "--link")
    assert res.exit_code == 0, res.output
    assert not any(store.blobs_dir.iterdir()), "a linked base copies nothing"
    assert_same_weights(pipe, bases.load_base(store, "linked"))
    single.unlink()
    res = run("generate", "a cat", "-o", str(tmp_path / "x.png"), "--base", "linked")
    assert res.exit_code == 1 and "linked source" in res.stderr
    res = run("store", "verify")
    assert res.exit_code == 1 and "missing-link" in res.stdout


def test_list_show_use_rm(tmp_path: Path, store: Store) -> None:
    folder = save_diffusers(tiny("sd1"), tmp_path / "pipe")
    assert run("base", "add", "one", str(folder)).exit_code == 0
    res = run("base", "add", "one", str(folder))
    assert res.exit_code == 1 and "exists already" in res.stderr and "--force" in res.stderr
    assert run("base", "add", "one", str(folder), "--force").exit_code == 0
    listed = json.loads(run("base", "list", "--json").stdout)
    names = [b["name"] for b in listed]
    assert "one" in names
    assert set(listed[names.index("one")]) >= {
        "name",
        "arch",
        "base_digest",
        "size",
        "cross_attn_layers",
        "is_default",
    }
    assert run("base", "use", "one").exit_code == 0
    assert json.loads(run("base", "show", "one", "--json").stdout)["is_default"] is True
    res = run("base", "rm", "one", "--dry-run")
    assert (
        res.exit_code == 0 and "would remove" in res.stdout and store.has_manifest("bases", "one")
    )
    assert run("base", "rm", "one", "-y").exit_code == 0
    assert not store.has_manifest("bases", "one")
    assert bases.default_base_name(store) == "toy"
    res = run("store", "prune")
    assert res.exit_code == 0 and not any(store.blobs_dir.iterdir())


def test_bad_sources(tmp_path: Path) -> None:
    res = run("base", "add", "x", str(tmp_path / "missing.safetensors"))
    assert res.exit_code == 1 and "not found" in res.stderr.lower()

    pipe = tiny("sd1")
    good = save_single_file(pipe, "sd1", tmp_path / "m.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    res = run("base", "add", "x", str(trunc))
    assert res.exit_code == 1 and "corrupt" in res.stderr

    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    res = run("base", "add", "x", str(ckpt))
    assert res.exit_code == 1 and "--allow-pickle" in res.stderr

    from safetensors.torch import save_file

    sdxl = tmp_path / "sdxl.safetensors"
    save_file(
        {
            # the SDXL refiner: label_emb and one OpenCLIP encoder (SDXL base is supported)
            "conditioner.embedders.0.model.ln_final.weight": torch.zeros(4),
            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2),
        },
        str(sdxl),
    )
    res = run("base", "add", "x", str(sdxl))
    assert res.exit_code == 1 and "unsupported" in res.stderr.lower() and "SDXL" in res.stderr
    assert not Store().list_manifests("bases")


def test_pickle_with_flag_is_registered_and_loaded_weights_only(
    tmp_path: Path, store: Store
) -> None:
    from sepme_engine.errors import UnsupportedModel
    from sepme_engine.models.ldm_keys import pipeline_to_ldm

    pipe = tiny("sd1")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": pipeline_to_ldm(pipe, "sd1")}, ckpt)
    res = run("base", "add", "pk", str(ckpt), "--allow-pickle", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["arch"] == "sd1"
    assert store.read_manifest("bases", "pk")["file_format"] == "pickle"
    # loading goes through the pickle path (no PickleRefused); a tiny pickle carries no configs,
    # so it is refused as a non-standard model rather than loaded with the wrong shapes
    with pytest.raises(UnsupportedModel):
        bases.load_base(store, "pk")


def test_known_short_name_offline_says_what_to_do() -> None:
    res = run("base", "add", "sd15")
    assert res.exit_code == 1
    assert "offline" in res.stderr.lower() and "path" in res.stderr.lower()
