"""The diffusers -> LDM (A1111/ComfyUI) key map: exact round trips through diffusers' own loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sepme_engine.models.configs import pipeline_configs, shipped_configs, write_config_dir
from sepme_engine.models.ldm_keys import (
    UNET_PREFIX,
    diffusers_to_ldm,
    ldm_key_map,
    ldm_unet_to_diffusers,
    openclip_padding,
    pipeline_to_ldm,
)
from tests._tiny import shared_tiny

ARCHS = ["sd1", "sd2", "sd2-v"]


def tiny(arch: str) -> Any:
    torch.set_num_threads(1)
    return shared_tiny(arch, seed=3)


def _assert_same_weights(a: Any, b: Any) -> None:
    for comp in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        assert sa.keys() == sb.keys(), comp
        bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not bad, f"{comp}: {bad[:3]}"


@pytest.mark.parametrize("arch", ARCHS)
def test_ldm_file_reloads_bit_exact_through_diffusers(arch: str, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = tiny(arch)
    ldm = pipeline_to_ldm(pipe, arch)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    config = write_config_dir(pipeline_configs(pipe), tmp_path / "config")
    back = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True
    )
    _assert_same_weights(pipe, back)
    assert back.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
    assert back.tokenizer.pad_token == ("<|endoftext|>" if arch == "sd1" else "!")
    # LDM layout facts a real loader relies on
    if arch == "sd1":
        assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in ldm
        assert ldm[UNET_PREFIX + "input_blocks.1.1.proj_in.weight"].ndim == 4  # 1x1 conv
    else:
        qkv = ldm["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
        te = pipe.text_encoder.state_dict()
        assert torch.equal(qkv[:32], te["encoder.layers.0.self_attn.q_proj.weight"])
        assert torch.equal(qkv[64:], te["encoder.layers.0.self_attn.v_proj.weight"])
        assert ldm[UNET_PREFIX + "input_blocks.1.1.proj_in.weight"].ndim == 2  # linear
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)


def test_key_map_streams_the_same_tensors() -> None:
    pipe = tiny("sd2")
    sds = {c: getattr(pipe, c).state_dict() for c in ("unet", "vae", "text_encoder")}
    entries = ldm_key_map({c: sd.keys() for c, sd in sds.items()}, "sd2")
    whole = diffusers_to_ldm(sds["unet"], sds["vae"], sds["text_encoder"], "sd2")
    assert [e.ldm_key for e in entries] == list(whole)
    used = {(e.component, k) for e in entries for k in e.diffusers_keys}
    assert used == {(c, k) for c, sd in sds.items() for k in sd}  # every tensor placed once
    assert {e.transform for e in entries} == {"copy", "linear_to_conv", "concat_qkv"}


def test_unknown_keys_are_refused() -> None:
    pipe = tiny("sd1")
    keys = {c: list(getattr(pipe, c).state_dict()) for c in ("unet", "vae", "text_encoder")}
    keys["unet"].append("add_embedding.linear_1.weight")
    with pytest.raises(ValueError, match="add_embedding"):
        ldm_key_map(keys, "sd1")
    with pytest.raises(ValueError, match="architecture"):
        ldm_key_map(keys, "sd3")
    # a second text encoder belongs to SDXL only
    with pytest.raises(ValueError, match="second text encoder"):
        ldm_key_map({**keys, "text_encoder_2": keys["text_encoder"]}, "sd2")


def _meta_models(arch: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = shipped_configs(arch)

    def strip(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if not k.startswith("_") and k != "architectures"}

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(strip(cfg["unet"]))
        vae = AutoencoderKL.from_config(strip(cfg["vae"]))
        text = CLIPTextModel(CLIPTextConfig(**strip(cfg["text_encoder"])))
    return unet, vae, text, cfg


@pytest.mark.parametrize("arch", ARCHS)
def test_real_size_layout_is_what_diffusers_converter_expects(arch: str) -> None:
    """Full-size SD1.5 / SD2.1 (meta tensors): our LDM keys go back through diffusers' own
    LDM->diffusers converters to exactly the original keys and shapes."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )

    unet, vae, text, cfg = _meta_models(arch)
    u, v, t = unet.state_dict(), vae.state_dict(), text.state_dict()
    ldm = diffusers_to_ldm(u, v, t, arch)
    ucfg = {k: x for k, x in cfg["unet"].items() if not k.startswith("_")}
    back_u = convert_ldm_unet_checkpoint(ldm, ucfg)
    back_v = convert_ldm_vae_checkpoint(ldm, cfg["vae"])
    if arch == "sd1":
        back_t = convert_ldm_clip_checkpoint(ldm)
    else:
        back_t = convert_open_clip_checkpoint(text, ldm)
    back_t = {k.removeprefix("text_model."): x for k, x in back_t.items()}
    for mine, theirs in ((u, back_u), (v, back_v), (t, back_t)):
        assert mine.keys() == theirs.keys()
        assert all(mine[k].shape == theirs[k].shape for k in mine)
    inv = ldm_unet_to_diffusers([k for k in ldm if k.startswith(UNET_PREFIX)])
    assert sorted(inv.values()) == sorted(u)

    # figures of the real checkpoints
    assert infer_diffusers_model_type(ldm) == ("v1" if arch == "sd1" else "v2")
    assert len(ldm) == (
        1130 if arch == "sd1" else 1214
    )  # v1-5-pruned-emaonly: 1131 incl. position_ids
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    for slot_key in ("output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight"):
        assert UNET_PREFIX + slot_key in ldm  # upsampler after a plain / an attention block
    n_unet = sum(p.numel() for p in unet.parameters())
    if arch == "sd1":
        assert ldm[UNET_PREFIX + "output_blocks.11.0.skip_connection.weight"].shape == (
            320,
            640,
            1,
            1,
        )
        assert n_unet == 859_520_964  # the "860M" SD 1.x UNet
    else:
        key = "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"
        assert ldm[key].shape == (3072, 1024)
        assert 865_000_000 < n_unet < 866_000_000


def test_openclip_padding_is_ignored_by_diffusers() -> None:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    _, _, text, _ = _meta_models("sd2")
    t = text.state_dict()  # meta tensors: shapes only
    text_ldm = diffusers_to_ldm({}, {}, t, "sd2")  # text encoder only
    pad = openclip_padding(t)
    assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in pad
    assert torch.equal(pad["cond_stage_model.model.text_projection"], torch.eye(1024))
    plain = convert_open_clip_checkpoint(text, text_ldm)
    padded = convert_open_clip_checkpoint(text, {**text_ldm, **pad})
    assert plain.keys() == padded.keys()
    with pytest.raises(ValueError, match="23-layer"):
        openclip_padding(tiny("sd2").text_encoder.state_dict())


def test_embedded_configs_round_trip_as_json(tmp_path: Path) -> None:
    pipe = tiny("sd2-v")
    cfg = pipeline_configs(pipe)
    assert cfg["tokenizer"] == {"clip": {"pad_token": "!", "max_length": 77}}
    again = json.loads(json.dumps(cfg))
    d = write_config_dir(again, tmp_path / "c")
    assert (
        json.loads((d / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
        == "v_prediction"
    )
    assert (d / "tokenizer" / "vocab.json").is_file()
