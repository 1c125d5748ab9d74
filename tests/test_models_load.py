"""Importing bases: detection from headers/configs, loading diffusers folders, single files, hub ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sepme_engine.errors import (
    CorruptEntry,
    DeviceUnavailable,
    InvalidInput,
    NotFound,
    OfflineError,
    PickleRefused,
    UnsupportedModel,
)
from sepme_engine.models.arch import ARCHS, cross_attention_kv, resolve_device
from sepme_engine.models.configs import pipeline_configs, shipped_configs
from sepme_engine.models.detect import KNOWN_BASES, inspect_source
from sepme_engine.models.ldm_keys import pipeline_to_ldm
from sepme_engine.models.load import load_pipeline
from tests._tiny import shared_tiny

ARCH_LIST = ["sd1", "sd2", "sd2-v"]
PRED = {"sd1": "epsilon", "sd2": "epsilon", "sd2-v": "v_prediction"}


class Payload:
    """An arbitrary object in a pickle: torch.load(weights_only=True) must refuse it."""


def tiny(arch: str) -> Any:
    torch.set_num_threads(1)
    return shared_tiny(arch, seed=7)


def expected_layers(pipe: Any) -> tuple[tuple[str, tuple[int, int]], ...]:
    return tuple((n, tuple(m.weight.shape)) for n, m in cross_attention_kv(pipe.unet))


def assert_same_weights(a: Any, b: Any) -> None:
    for comp in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        assert sa.keys() == sb.keys(), comp
        assert all(torch.equal(sa[k], sb[k]) for k in sa), comp


def assert_ready(pipe: Any) -> None:
    assert pipe.safety_checker is None
    for comp in ("unet", "vae", "text_encoder"):
        model = getattr(pipe, comp)
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())


def write_ldm(
    pipe: Any,
    arch: str,
    path: Path,
    *,
    embed: bool = True,
    metadata: dict[str, str] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    sd = {k: v.contiguous() for k, v in pipeline_to_ldm(pipe, arch).items()}
    sd.update(extra or {})
    meta = dict(metadata or {})
    if embed:
        meta["sepme.configs"] = json.dumps(pipeline_configs(pipe))
    save_file(sd, str(path), metadata=meta)
    return path


# --- diffusers folders ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_diffusers_folder_detect_and_reload(arch: str, tmp_path: Path) -> None:
    pipe = tiny(arch)
    pipe.save_pretrained(tmp_path / "base")
    info = inspect_source(tmp_path / "base")
    assert (info.kind, info.arch, info.prediction_type) == ("diffusers", arch, PRED[arch])
    assert info.prediction_source == "config"
    assert info.text_width == 32 and info.tokenizer_max_length == 77 and info.sample_size == 16
    assert info.cross_attn_layers == expected_layers(pipe)
    assert len(info.cross_attn_layers) == 8  # 4 attn2 modules x (to_k, to_v)
    assert info.cross_attn_layers[0] == (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        (32, 32),
    )
    assert not info.has_embedded_config

    back = load_pipeline(tmp_path / "base")
    assert_same_weights(pipe, back)
    assert_ready(back)
    assert back.scheduler.config.prediction_type == PRED[arch]
    assert back.tokenizer.pad_token == ("<|endoftext|>" if arch == "sd1" else "!")


def test_prediction_override_changes_scheduler(tmp_path: Path) -> None:
    tiny("sd2").save_pretrained(tmp_path / "base")
    info = inspect_source(tmp_path / "base", prediction_type="v")
    assert (info.arch, info.prediction_type, info.prediction_source) == (
        "sd2-v",
        "v_prediction",
        "override",
    )
    back = load_pipeline(tmp_path / "base", prediction_type="v_prediction")
    assert back.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(InvalidInput):
        inspect_source(tmp_path / "base", prediction_type="x0")


def test_pickle_only_diffusers_folder_is_refused(tmp_path: Path) -> None:
    tiny("sd1").save_pretrained(tmp_path / "base", safe_serialization=False)
    with pytest.raises(PickleRefused, match="pickle"):
        inspect_source(tmp_path / "base")
    info = inspect_source(tmp_path / "base", allow_pickle=True)
    assert info.arch == "sd1"
    assert_same_weights(tiny("sd1"), load_pipeline(tmp_path / "base", allow_pickle=True))


# --- single files -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_single_file_with_embedded_configs(arch: str, tmp_path: Path) -> None:
    pipe = tiny(arch)
    path = write_ldm(pipe, arch, tmp_path / "model.safetensors")
    info = inspect_source(path)
    assert (info.kind, info.file_format, info.arch) == ("single_file", "safetensors", arch)
    assert info.has_embedded_config and info.prediction_source == "config"
    assert info.cross_attn_layers == expected_layers(pipe)
    assert info.text_width == 32 and info.sample_size == 16

    back = load_pipeline(str(path), "single_file")
    assert_same_weights(pipe, back)
    assert_ready(back)
    assert back.scheduler.config.prediction_type == PRED[arch]
    assert back.tokenizer.pad_token == ("<|endoftext|>" if arch == "sd1" else "!")
    with pytest.raises(InvalidInput):
        load_pipeline(str(path), "diffusers")


def test_prediction_type_rules_for_single_files(tmp_path: Path) -> None:
    pipe = tiny("sd2")

    def detect(name: str, **kw: Any) -> tuple[str, str]:
        override = kw.pop("prediction_type", None)
        info = inspect_source(
            write_ldm(pipe, "sd2", tmp_path / name, embed=False, **kw), prediction_type=override
        )
        return info.prediction_type, info.prediction_source

    assert detect("a.safetensors") == ("epsilon", "default")
    # the file name plays no part (a renamed file must not change the model)
    assert detect("v2-1_768-ema-pruned.safetensors") == ("epsilon", "default")
    assert detect("b.safetensors", metadata={"modelspec.prediction_type": "v"}) == (
        "v_prediction",
        "metadata",
    )
    arch_v = {"modelspec.architecture": "stable-diffusion-v2-768-v"}
    assert detect("c.safetensors", metadata=arch_v) == ("v_prediction", "metadata")
    arch_e = {"modelspec.architecture": "stable-diffusion-v2-512"}
    assert detect("d_768.safetensors", metadata=arch_e) == ("epsilon", "metadata")
    assert detect("e.safetensors", extra={"v_pred": torch.zeros(0)}) == (
        "v_prediction",
        "v_pred key",
    )
    assert detect("f_768.safetensors", prediction_type="epsilon") == ("epsilon", "override")
    info = inspect_source(tmp_path / "a.safetensors")
    assert info.arch == "sd2" and any("assumed epsilon" in n for n in info.notes)
    assert any("non-standard" in n for n in info.notes)
    # sd1 is always epsilon unless told otherwise, whatever the name
    sd1 = inspect_source(write_ldm(tiny("sd1"), "sd1", tmp_path / "x_768.safetensors", embed=False))
    assert (sd1.arch, sd1.prediction_type, sd1.prediction_source) == ("sd1", "epsilon", "default")


def test_tiny_file_without_configs_does_not_fit_shipped_config(tmp_path: Path) -> None:
    path = write_ldm(tiny("sd1"), "sd1", tmp_path / "m.safetensors", embed=False)
    with pytest.raises(UnsupportedModel, match="non-standard"):
        load_pipeline(path)
    # ...but loads with the configs given explicitly
    back = load_pipeline(path, configs=pipeline_configs(tiny("sd1")))
    assert_same_weights(tiny("sd1"), back)


def test_pickle_checkpoint(tmp_path: Path) -> None:
    pipe = tiny("sd2-v")
    sd = {k: v.clone() for k, v in pipeline_to_ldm(pipe, "sd2-v").items()}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 10}, path)
    with pytest.raises(PickleRefused) as err:
        inspect_source(path)
    assert err.value.kind == "pickle" and ".safetensors" in (err.value.hint or "")
    info = inspect_source(path, allow_pickle=True)
    assert (info.file_format, info.arch) == ("pickle", "sd2")  # no metadata in pickles: default
    back = load_pipeline(path, allow_pickle=True, configs=pipeline_configs(pipe))
    assert_same_weights(pipe, back)
    assert back.scheduler.config.prediction_type == "v_prediction"  # from the given configs

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "x": Payload()}, evil)  # arbitrary object
    with pytest.raises(PickleRefused, match="other than tensors"):
        inspect_source(evil, allow_pickle=True)


# --- bad inputs -------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        inspect_source(tmp_path / "nope.safetensors")
    with pytest.raises(NotFound):
        inspect_source("./not/here")


def test_truncated_and_corrupt_safetensors(tmp_path: Path) -> None:
    good = write_ldm(tiny("sd1"), "sd1", tmp_path / "good.safetensors")
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptEntry, match="truncated"):
        inspect_source(cut)
    header_only = tmp_path / "header.safetensors"
    header_only.write_bytes(data[:100])
    with pytest.raises(CorruptEntry):
        inspect_source(header_only)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 32)
    with pytest.raises(CorruptEntry, match="header"):
        inspect_source(junk)
    tiny_file = tmp_path / "empty.safetensors"
    tiny_file.write_bytes(b"abc")
    with pytest.raises(CorruptEntry):
        inspect_source(tiny_file)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (
            [
                "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                "conditioner.embedders.1.model.token_embedding.weight",
            ],
            "lacks the UNet",  # SDXL is supported; an incomplete one is refused
        ),
        (["model.diffusion_model.label_emb.0.0.weight", "first_stage_model.x"], "SDXL refiner"),
        (
            ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"],
            "Stable Diffusion 3",
        ),
        (["double_blocks.0.img_attn.norm.key_norm.scale"], "Flux"),
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
        (["model.diffusion_model.input_blocks.0.0.weight"], "lacks the VAE"),
    ],
)
def test_unsupported_models(keys: list[str], match: str, tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2, 2) for k in keys}, str(path))
    with pytest.raises(UnsupportedModel, match=match):
        inspect_source(path)


def test_inpainting_and_plain_folders_are_refused(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in pipeline_to_ldm(tiny("sd1"), "sd1").items()}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    save_file(sd, str(tmp_path / "inpaint.safetensors"))
    with pytest.raises(UnsupportedModel, match="9 input channels"):
        inspect_source(tmp_path / "inpaint.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsupportedModel, match="model_index"):
        inspect_source(tmp_path / "folder")


def test_hub_id_offline_without_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(OfflineError) as err:
        inspect_source("sd15")
    assert "local path" in (err.value.hint or "")
    with pytest.raises(OfflineError, match="no local file or folder"):
        inspect_source("someone/some-model")


def test_detection_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sepme_engine.models.detect, sepme_engine.models.configs, "
        "sepme_engine.models.ldm_keys, sepme_engine.models.arch;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _fake_cache(cache: Path, repo_id: str, pipe: Any) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    pipe.save_pretrained(repo / "snapshots" / commit)


def test_hub_id_from_local_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = tiny("sd2-v")
    # only the old runwayml name is cached: the sd15 short name still finds it
    _fake_cache(tmp_path / "hub", "runwayml/stable-diffusion-v1-5", pipe)
    info = inspect_source("sd15")
    assert (info.kind, info.hub_id, info.arch) == (
        "hub",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd2-v",
    )
    assert info.cross_attn_layers == expected_layers(pipe)  # from the config, on the meta device
    assert_same_weights(pipe, load_pipeline("sd15"))


def test_known_bases() -> None:
    assert KNOWN_BASES["sd14"] == "CompVis/stable-diffusion-v1-4"
    assert KNOWN_BASES["sd21"] == "stabilityai/stable-diffusion-2-1"
    assert KNOWN_BASES["sd21-base"] == "stabilityai/stable-diffusion-2-1-base"
    assert KNOWN_BASES["sd2-base"] == "stabilityai/stable-diffusion-2-base"
    assert KNOWN_BASES["sd15"].endswith("/stable-diffusion-v1-5")


# --- shipped configs, arch facts, devices -----------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_shipped_configs_describe_the_real_models(arch: str) -> None:
    cfg = shipped_configs(arch)
    facts = ARCHS[arch]
    assert cfg["unet"]["cross_attention_dim"] == facts.text_width
    assert cfg["text_encoder"]["hidden_size"] == facts.text_width
    assert cfg["text_encoder"]["num_hidden_layers"] == (12 if arch == "sd1" else 23)
    assert cfg["unet"]["use_linear_projection"] is facts.use_linear_projection
    assert cfg["unet"]["sample_size"] == facts.sample_size
    assert cfg["scheduler"]["prediction_type"] == facts.prediction_type
    assert cfg["tokenizer"]["clip"]["pad_token"] == facts.pad_token
    assert cfg["model_index"]["safety_checker"] == [None, None]


def test_shipped_sd15_config_builds_an_sd15_skeleton(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    from sepme_engine.models.configs import write_config_dir

    d = write_config_dir(shipped_configs("sd1"), tmp_path / "sd15")
    cfg = UNet2DConditionModel.load_config(str(d / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    kv = cross_attention_kv(unet)
    assert len(kv) == 32  # 16 cross-attention modules
    assert {tuple(m.weight.shape)[1] for _, m in kv} == {768}
    tok = CLIPTokenizer.from_pretrained(str(d / "tokenizer"), local_files_only=True)
    ids = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:6] == [49406, 320, 1125, 539, 320, 2368] and ids[6] == 49407 and len(ids) == 77


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(InvalidInput):
        resolve_device("tpu9")
