"""The architecture table is the one place an architecture is listed: every consumer (detection,
loading, shipped configs, LDM key maps, modelspec and kohya metadata, settings profiles) reads its
per-arch facts from `models.arch.ARCHS`, so a new architecture is one entry. Also the one
prediction-type spelling and the one dtype table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sepme_engine import config, device
from sepme_engine.errors import InvalidInput
from sepme_engine.export.lora import kohya_metadata
from sepme_engine.export.modelspec import modelspec_metadata
from sepme_engine.export.report import EXPORT_DTYPES, parse_dtype
from sepme_engine.export.single_file import export_single_file
from sepme_engine.models import arch as arch_mod
from sepme_engine.models.arch import (
    ARCHS,
    DTYPES,
    arch_facts,
    arch_for,
    dtype_name,
    normalize_prediction_type,
    torch_dtype,
)
from sepme_engine.models.configs import KNOWN_PROFILES, SHIPPED_DIR, SHIPPED_NAMES, shipped_configs
from sepme_engine.models.ldm_keys import ldm_key_map, text_encoder_style
from tests._tiny import make_tiny_pipeline


@pytest.mark.parametrize("spelling", ["v_prediction", "v", "V", "v-prediction", "vpred", " v "])
def test_v_prediction_has_one_spelling_inside(spelling: str) -> None:
    assert normalize_prediction_type(spelling) == "v_prediction"
    # modelspec files spell it "v" whichever spelling came in
    meta = modelspec_metadata("sd1", spelling, date="2026-01-01")
    assert meta["modelspec.prediction_type"] == "v"


@pytest.mark.parametrize("spelling", ["epsilon", "eps", "EPSILON"])
def test_epsilon_spellings(spelling: str) -> None:
    assert normalize_prediction_type(spelling) == "epsilon"
    assert modelspec_metadata("sd1", spelling)["modelspec.prediction_type"] == "epsilon"


def test_unknown_prediction_type_is_refused() -> None:
    with pytest.raises(InvalidInput, match="sample"):
        normalize_prediction_type("sample")
    with pytest.raises(InvalidInput, match="sample"):
        modelspec_metadata("sd1", "sample")


def test_the_table_covers_every_list_of_architectures() -> None:
    assert config.ARCHES == ("toy", *ARCHS)
    assert set(config.ERASE_DEFAULTS) == {"toy", *ARCHS}
    assert KNOWN_PROFILES == ("toy", *ARCHS)
    assert SHIPPED_NAMES == tuple(a.shipped_config for a in ARCHS.values())
    for name, facts in ARCHS.items():
        assert facts.name == name
        assert (SHIPPED_DIR / facts.shipped_config).is_dir()
        assert text_encoder_style(name) == facts.text_encoder
        assert arch_for(facts.family, facts.prediction_type) == name


@pytest.mark.parametrize("name", list(ARCHS))
def test_each_entry_agrees_with_its_shipped_configs(name: str) -> None:
    facts = ARCHS[name]
    cfg = shipped_configs(name)
    assert cfg["model_index"]["_class_name"] == facts.pipeline
    assert cfg["scheduler"]["prediction_type"] == facts.prediction_type
    assert cfg["unet"]["sample_size"] == facts.sample_size
    assert cfg["unet"]["cross_attention_dim"] == facts.text_width
    assert bool(cfg["unet"].get("use_linear_projection", False)) == facts.use_linear_projection
    assert ("text_encoder_2" in cfg) == (facts.n_text_encoders == 2)


def test_export_metadata_comes_from_the_table() -> None:
    """The figures the exports wrote before the table existed, one per arch."""
    expected = {
        "sd1": ("stable-diffusion-v1", "512x512", "epsilon", "sd_v1", "False", "False"),
        "sd2": ("stable-diffusion-v2-512", "512x512", "epsilon", "sd_v2", "True", "False"),
        "sd2-v": ("stable-diffusion-v2-768-v", "768x768", "v", "sd_v2_v", "True", "True"),
        "sdxl": ("stable-diffusion-xl-v1-base", "1024x1024", "epsilon", "sdxl_base_v1-0")
        + ("False", "False"),
    }
    assert set(expected) == set(ARCHS)
    for name, (spec, res, pred, kohya, v2, vparam) in expected.items():
        meta = modelspec_metadata(name)
        assert meta["modelspec.architecture"] == spec
        assert modelspec_metadata(name, lora=True)["modelspec.architecture"] == spec + "/lora"
        assert meta["modelspec.resolution"] == res
        assert meta["modelspec.prediction_type"] == pred
        ss = kohya_metadata(name, 4)
        assert (ss["ss_base_model_version"], ss["ss_v2"], ss["ss_v_parameterization"]) == (
            kohya,
            v2,
            vparam,
        )
    assert "Stable Diffusion XL" in modelspec_metadata("sdxl")["modelspec.description"]


def test_unknown_architecture_is_refused_everywhere() -> None:
    with pytest.raises(InvalidInput, match="sd3"):
        arch_facts("sd3")
    with pytest.raises(InvalidInput, match="sd3"):
        modelspec_metadata("sd3")
    with pytest.raises(InvalidInput, match="sd3"):
        kohya_metadata("sd3", 4)
    with pytest.raises(ValueError, match="sd3"):
        text_encoder_style("sd3")


def test_a_new_architecture_is_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A made-up SD 1.x v-prediction 768px arch, added to the table only: the key map, the
    shipped configs, the family's arch choice, modelspec, kohya and the single-file export
    (which now pins the prediction type of the sd1 family) all follow."""
    new = dataclasses.replace(
        ARCHS["sd1"],
        name="sd1-v",
        label="Stable Diffusion 1.x (768, v-prediction)",
        prediction_type="v_prediction",
        sample_size=96,
        modelspec_architecture="stable-diffusion-v1-768-v",
        kohya_base_version="sd_v1_v",
    )
    monkeypatch.setitem(arch_mod.ARCHS, "sd1-v", new)

    assert arch_for("sd1", "v_prediction") == "sd1-v"
    assert arch_for("sd1", "epsilon") == "sd1"
    assert new.pins_prediction_type and ARCHS["sd1"].pins_prediction_type
    assert shipped_configs("sd1-v")["unet"] == shipped_configs("sd1")["unet"]

    meta = modelspec_metadata("sd1-v", date="2026-01-01")
    assert meta["modelspec.architecture"] == "stable-diffusion-v1-768-v"
    assert meta["modelspec.resolution"] == "768x768"
    assert meta["modelspec.prediction_type"] == "v"
    ss = kohya_metadata("sd1-v", 4)
    assert ss["ss_base_model_version"] == "sd_v1_v"
    assert ss["ss_v_parameterization"] == "True" and ss["ss_v2"] == "False"

    torch.set_num_threads(1)
    pipe = make_tiny_pipeline("sd1", seed=1)
    keys = {c: list(getattr(pipe, c).state_dict()) for c in ("unet", "vae", "text_encoder")}
    assert ldm_key_map(keys, "sd1-v") == ldm_key_map(keys, "sd1")

    with pytest.raises(InvalidInput, match="sd1-v is v_prediction") as exc:  # epsilon scheduler
        export_single_file(pipe, {}, tmp_path / "eps.safetensors", arch="sd1-v")
    assert exc.value.hint is not None and "export with arch sd1," in exc.value.hint
    pipe.scheduler.register_to_config(prediction_type="v_prediction")
    out = tmp_path / "v.safetensors"
    export_single_file(pipe, {}, out, arch="sd1-v", dtype="fp32")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1-768-v"
    assert meta["modelspec.prediction_type"] == "v"
    assert meta["sepme.arch"] == "sd1-v"


def test_one_dtype_table() -> None:
    assert set(EXPORT_DTYPES) == set(DTYPES) == set(device.DTYPE_NAMES)
    for short, long in DTYPES.items():
        t = getattr(torch, long)
        assert torch_dtype(short) is t and torch_dtype(long) is t
        assert dtype_name(t) == short and parse_dtype(t) == (short, t)
    assert dtype_name("half") == "fp16"
    for bad in ("int8", torch.int8, "fp64"):
        with pytest.raises(InvalidInput):
            dtype_name(bad)
        with pytest.raises(InvalidInput, match="export dtype"):
            parse_dtype(bad)
