"""SDXL bases on a tiny SDXL-architecture model (tests/_tiny.make_sdxl_pipeline: the shipped
SDXL base 1.0 topology at reduced width): detection, import from a diffusers folder and an
A1111/ComfyUI single file, the prompt embedding and the UNet's added conditioning, erasure with
SepME / sepme-cf / the baselines, decoupling on SDXL shapes, exports, refusals."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sepme_engine.delta import hooks
from sepme_engine.erase.sepme import SepMEConfig, closed_form_sepme, train_sepme
from sepme_engine.errors import InvalidInput, UnsupportedModel
from sepme_engine.models.arch import ARCHS, cross_attention_kv
from sepme_engine.models.detect import KNOWN_BASES, inspect_source
from sepme_engine.models.ldm_keys import (
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    ldm_attention_module_names,
    ldm_key_map,
    pipeline_to_ldm,
)
from sepme_engine.models.load import load_pipeline
from sepme_engine.models.text import encode_prompts, encode_prompts_xl
from tests._fixtures import save_diffusers, save_single_file
from tests._tiny import XL_TEXT_WIDTHS, shared_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
FAST = SepMEConfig(max_steps=3, min_steps=1, lr=0.5, seed=0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pipe() -> Any:
    return shared_pipeline("sdxl", seed=0, max_length=8)


@pytest.fixture(scope="module")
def files(pipe: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdxl")
    return {
        "diffusers": save_diffusers(pipe, root / "folder"),
        "single_file": save_single_file(pipe, "sdxl", root / "sdxl.safetensors"),
    }


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))


def _same_weights(a: Any, b: Any) -> None:
    for comp in COMPONENTS:
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        assert sa.keys() == sb.keys(), comp
        bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not bad, (comp, bad[:3])


def _predict(pipe: Any, prompts: list[str], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = len(prompts)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    with torch.no_grad():
        return pipe.unet(x, t, encoder_hidden_states=encode_prompts(pipe, prompts)).sample


# --- architecture tables and shipped configs ---------------------------------------------------


def test_sdxl_arch_and_shipped_configs_build_the_real_model_on_meta() -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sepme_engine.models.configs import shipped_configs

    facts = ARCHS["sdxl"]
    assert facts.text_width == 2048 and facts.sample_size == 128 and facts.pad_token == "!"
    assert KNOWN_BASES["sdxl"] == "stabilityai/stable-diffusion-xl-base-1.0"
    cfgs = shipped_configs("sdxl")
    assert cfgs["tokenizer"]["clip"]["pad_token"] == "<|endoftext|>"
    assert cfgs["tokenizer_2"]["clip"]["pad_token"] == "!"
    unet_cfg = {k: v for k, v in cfgs["unet"].items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        te1 = CLIPTextModel(CLIPTextConfig(**cfgs["text_encoder"]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfgs["text_encoder_2"]))
    kv = cross_attention_kv(unet)
    assert len(kv) == 2 * facts.n_cross_attn_layers  # 70 attn2 modules, to_k and to_v each
    assert {tuple(m.weight.shape[1:]) for _, m in kv} == {(2048,)}
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base UNet
    # the cross-attention width is the two encoders' hidden sizes together
    assert te1.config.hidden_size + te2.config.hidden_size == 2048
    # text_time: 6 time ids x 256 + the pooled 1280-d bigG projection
    assert unet.add_embedding.linear_1.in_features == 6 * 256 + te2.config.projection_dim

    # at full size, sepme's LDM layout is what diffusers' own single-file converter reads back
    # (so a real SDXL base file loads with the shipped configs): keys and shapes, on meta tensors
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_open_clip_checkpoint,
    )

    sds = {"unet": unet.state_dict(), "text_encoder_2": te2.state_dict()}
    plan = ldm_key_map({c: sd.keys() for c, sd in sds.items()}, "sdxl")
    ldm = {e.ldm_key: e.build([sds[e.component][k] for k in e.diffusers_keys]) for e in plan}
    assert ldm["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
    assert ldm[SDXL_OPENCLIP_PREFIX + "text_projection"].shape == (1280, 1280)
    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, unet_cfg),
        "text_encoder_2": convert_open_clip_checkpoint(te2, ldm, prefix=SDXL_OPENCLIP_PREFIX),
    }
    for comp, sd in sds.items():
        assert back[comp].keys() == sd.keys(), comp
        assert all(back[comp][k].shape == v.shape for k, v in sd.items()), comp


# --- detection and import --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["diffusers", "single_file"])
def test_import_detects_sdxl_and_loads_every_weight(pipe: Any, files: dict, kind: str) -> None:
    info = inspect_source(files[kind])
    assert info.kind == kind and info.arch == "sdxl" and info.family == "sdxl"
    assert info.text_width == sum(XL_TEXT_WIDTHS)
    assert info.prediction_type == "epsilon" and not info.notes
    # 17 attn2 modules at this size: levels 1 (2 down + 3 up, depth 1), 2 (2 + 3, depth 2), mid 2
    assert len(info.cross_attn_layers) == 2 * (5 + 10 + 2)
    assert any(".transformer_blocks.1.attn2" in n for n, _ in info.cross_attn_layers)
    loaded = load_pipeline(info)
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    _same_weights(pipe, loaded)
    assert not loaded.unet.training and not loaded.text_encoder_2.training


def test_single_file_has_the_sgm_layout(pipe: Any) -> None:
    ldm = pipeline_to_ldm(pipe, "sdxl")
    keys = set(ldm)
    assert SDXL_CLIP_PREFIX + "embeddings.token_embedding.weight" in keys
    assert SDXL_OPENCLIP_PREFIX + "transformer.resblocks.2.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight" in keys
    assert "model.diffusion_model.output_blocks.2.1.transformer_blocks.1.attn2.to_v.weight" in keys
    assert not any(k.startswith("cond_stage_model.") for k in keys)
    # OpenCLIP: fused q, k, v; text_projection stored as x @ P (the transpose of diffusers')
    w2 = XL_TEXT_WIDTHS[1]
    assert ldm[SDXL_OPENCLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"].shape == (
        3 * w2,
        w2,
    )
    proj = pipe.text_encoder_2.text_projection.weight
    assert torch.equal(ldm[SDXL_OPENCLIP_PREFIX + "text_projection"], proj.T)


def test_refiner_and_other_families_keep_a_clear_refusal(pipe: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ldm = {k: v.contiguous() for k, v in pipeline_to_ldm(pipe, "sdxl").items()}
    # a refiner: label_emb and one OpenCLIP text encoder under embedders.0
    refiner = {
        k.replace(SDXL_OPENCLIP_PREFIX, "conditioner.embedders.0.model."): v
        for k, v in ldm.items()
        if not k.startswith(SDXL_CLIP_PREFIX)
    }
    save_file(refiner, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(UnsupportedModel, match="refiner"):
        inspect_source(tmp_path / "refiner.safetensors")
    # bigG without the ViT-L encoder
    save_file(
        {k: v for k, v in ldm.items() if not k.startswith(SDXL_CLIP_PREFIX)},
        str(tmp_path / "half.safetensors"),
    )
    with pytest.raises(UnsupportedModel, match="lacks the text encoder"):
        inspect_source(tmp_path / "half.safetensors")
    # a refiner diffusers folder (no text_encoder) and an SD3 one
    for cls, te in (("StableDiffusionXLImg2ImgPipeline", None), ("StableDiffusion3Pipeline", 1)):
        folder = tmp_path / cls
        folder.mkdir()
        index = {"_class_name": cls, "text_encoder": [None, None] if te is None else ["t", "C"]}
        (folder / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(UnsupportedModel, match=cls):
            inspect_source(folder)


def test_sdxl_pickle_is_refused_with_a_hint(pipe: Any, tmp_path: Path) -> None:
    path = tmp_path / "sdxl.ckpt"
    torch.save({"state_dict": pipeline_to_ldm(pipe, "sdxl")}, str(path))
    from sepme_engine.models.configs import pipeline_configs

    with pytest.raises(UnsupportedModel, match="safetensors"):
        load_pipeline(path, allow_pickle=True, configs=pipeline_configs(pipe))


def test_sdxl_hub_short_name_from_the_local_cache(
    pipe: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from sepme_engine.errors import OfflineError

    with pytest.raises(OfflineError, match="stable-diffusion-xl-base-1.0"):
        inspect_source("sdxl")
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    pipe.save_pretrained(repo / "snapshots" / ("0" * 40))
    info = inspect_source("sdxl")
    assert (info.kind, info.hub_id, info.arch) == (
        "hub",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "sdxl",
    )
    # layers from the UNet config on the meta device (no weights read) = the real ones
    assert [n for n, _ in info.cross_attn_layers] == [n for n, _ in cross_attention_kv(pipe.unet)]
    _same_weights(pipe, load_pipeline("sdxl"))


def test_sdxl_profile_defaults_are_the_papers() -> None:
    from sepme_engine.config import ARCHES, ERASE_DEFAULTS, SD_ERASE_DEFAULTS

    assert "sdxl" in ARCHES and ERASE_DEFAULTS["sdxl"] == SD_ERASE_DEFAULTS


# --- the prompt embedding and the UNet's added conditioning -----------------------------------


def test_encoding_is_the_pipelines_and_the_hook_sends_its_added_conditioning(pipe: Any) -> None:
    emb, pooled = encode_prompts_xl(pipe, ["a cat", "a red car"])
    for i, prompt in enumerate(["a cat", "a red car"]):
        ref, _, ref_pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        assert torch.equal(emb[i : i + 1], ref) and torch.equal(pooled[i : i + 1], ref_pooled)
    assert emb.shape == (2, 8, sum(XL_TEXT_WIDTHS))
    assert torch.equal(encode_prompts(pipe, ["a cat"]), emb[:1])
    # the two tokenizers pad differently (eos vs "!"), as SDXL's do
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"

    size = pipe.default_sample_size * pipe.vae_scale_factor
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    explicit = {
        "text_embeds": pooled.flip(0),
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32),
    }
    e = emb.flip(0)  # rows in another order than encoded: looked up by content
    with torch.no_grad():
        implicit = pipe.unet(x, t, encoder_hidden_states=e).sample
        given = pipe.unet(x, t, encoder_hidden_states=e, added_cond_kwargs=explicit).sample
        wrong = dict(explicit, text_embeds=pooled)
        swapped = pipe.unet(x, t, encoder_hidden_states=e, added_cond_kwargs=wrong).sample
    assert torch.equal(implicit, given)
    assert not torch.equal(implicit, swapped)  # the pooled embedding matters
    with pytest.raises(InvalidInput, match="encode_prompts did not produce"):
        pipe.unet(x, t, encoder_hidden_states=torch.randn_like(e))


# --- erasure ---------------------------------------------------------------------------------


def test_sepme_on_sdxl_decouples_preserved_prompts_exactly(pipe: Any, latents: Any) -> None:
    preserve = ["a dog", "a red car"]
    r = train_sepme(pipe, "a cat", preserve, latents, FAST, "cpu")
    inc = r.increment
    d = sum(XL_TEXT_WIDTHS)
    assert r.iterations == 3 and inc.basis.shape[1] == d and 0 < r.m_k < d
    assert len(inc.layer_names()) == 2 * 17
    # ΔW e(c)ᵀ = 0 for the preserved prompts' 2048-d (here 48-d) concatenated embeddings
    kept = ["", *preserve]
    emb = encode_prompts(pipe, kept).double()
    deltas = hooks.sum_deltas([inc])
    for name, delta in deltas.items():
        out = delta.double() @ emb.reshape(-1, d).T
        scale = float(delta.double().abs().max() * emb.abs().max()) * d
        assert float(out.abs().max()) <= 1e-6 * scale, name
    base_kept, base_cat = _predict(pipe, kept), _predict(pipe, ["a cat"])
    scale = float(base_kept.abs().max())
    with hooks.apply_deltas_inplace(pipe.unet, deltas):
        merged_kept, merged_cat = _predict(pipe, kept), _predict(pipe, ["a cat"])
    assert float((merged_kept - base_kept).abs().max()) <= 1e-5 * scale
    assert not torch.equal(merged_cat, base_cat)


def test_closed_form_on_sdxl_maps_the_concept_onto_the_anchor(pipe: Any) -> None:
    r = closed_form_sepme(pipe, "a cat", ["a dog"], FAST, "cpu")
    assert r.stop_reason == "closed-form" and r.increment.basis.shape[1] == sum(XL_TEXT_WIDTHS)
    assert r.cf_gap_left is not None and r.cf_gap_left < 1.0
    kept = ["", "a dog"]
    base = _predict(pipe, kept)
    with hooks.apply_deltas_inplace(pipe.unet, hooks.sum_deltas([r.increment])):
        after = _predict(pipe, kept)
    assert float((after - base).abs().max()) <= 1e-5 * float(base.abs().max())


def test_baselines_run_on_sdxl_shapes(pipe: Any, latents: Any) -> None:
    from sepme_engine.erase.esd import EsdConfig, train_esd
    from sepme_engine.erase.fmn import FmnConfig, train_fmn
    from sepme_engine.erase.uce import UceConfig, train_uce

    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    d = sum(XL_TEXT_WIDTHS)
    esd = train_esd(pipe, "a cat", latents, EsdConfig(steps=2, lr=1e-3, seed=0), "cpu")
    fmn = train_fmn(pipe, "a cat", latents, FmnConfig(steps=2, lr=1e-2, seed=0), "cpu")
    uce = train_uce(pipe, "a cat", ["a dog"], UceConfig(), "cpu")
    for result in (esd, fmn, uce):
        deltas = hooks.sum_deltas([result.increment])
        assert deltas and all(v.shape[1] == d for v in deltas.values())
        assert any(float(v.abs().max()) > 0 for v in deltas.values())
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


# --- exports ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def erased(pipe: Any) -> Any:
    """A closed-form SDXL increment blown up so that ΔW is comparable to W (exports must carry
    it exactly, not round it away)."""
    from sepme_engine.delta.increment import Increment

    inc = closed_form_sepme(pipe, "a cat", ["a dog"], FAST, "cpu").increment
    g = torch.Generator().manual_seed(3)
    coefs = {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in inc.coefs.items()}
    return Increment.factored(inc.basis, coefs)


def _assert_composed(pipe: Any, loaded: Any, deltas: dict[str, torch.Tensor]) -> None:
    """`loaded` (fp32) has W + ΔW on the increment's layers and W everywhere else."""
    for comp in COMPONENTS:
        base, got = getattr(pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
        assert base.keys() == got.keys(), comp
        for k, v in base.items():
            layer = k[: -len(".weight")]
            if comp == "unet" and layer in deltas:
                # (W.float() + ΔW).to(fp32) written, read back bit-for-bit
                assert torch.equal(got[k], v + deltas[layer]), k
            else:
                assert torch.equal(got[k], v), (comp, k)


def test_ldm_export_loads_in_diffusers_and_back_into_sepme(
    pipe: Any, erased: Any, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    from sepme_engine.export.single_file import export_single_file
    from sepme_engine.models.configs import write_config_dir

    deltas = hooks.sum_deltas([erased])
    out = tmp_path / "xl.safetensors"
    report = export_single_file(pipe, deltas, out, arch="sdxl", dtype="fp32", erased=["a cat"])
    meta = report.metadata
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.prediction_type"] == "epsilon" and meta["sepme.arch"] == "sdxl"
    assert meta["modelspec.resolution"] == "64x64"  # tiny: sample 8 x VAE scale 8
    assert "Stable Diffusion XL" in meta["modelspec.description"]
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
    assert SDXL_OPENCLIP_PREFIX + "text_projection" in keys
    assert "model.diffusion_model.label_emb.0.2.bias" in keys

    cfg = write_config_dir(json.loads(meta["sepme.configs"]), tmp_path / "cfg")
    assert (cfg / "text_encoder_2" / "config.json").is_file()
    loaded = StableDiffusionXLPipeline.from_single_file(
        str(out), config=str(cfg), local_files_only=True
    )
    _assert_composed(pipe, loaded, deltas)
    assert loaded.tokenizer_2.pad_token == "!"
    # and sepme reads its own export back as an SDXL base (embedded configs)
    info = inspect_source(out)
    assert info.arch == "sdxl" and info.has_embedded_config and not info.notes
    _assert_composed(pipe, load_pipeline(info), deltas)


def test_diffusers_export_round_trip(pipe: Any, erased: Any, tmp_path: Path) -> None:
    from sepme_engine.export.diffusers_dir import export_diffusers

    deltas = hooks.sum_deltas([erased])
    out = tmp_path / "xl-dir"
    export_diffusers(pipe, deltas, out, dtype="fp32", profile="sdxl")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert (out / "text_encoder_2" / "model.safetensors").is_file()
    info = inspect_source(out)
    assert info.arch == "sdxl" and info.profile == "sdxl"
    _assert_composed(pipe, load_pipeline(info), deltas)


def test_lora_export_has_kohya_sdxl_names_and_fuses_in_diffusers(
    pipe: Any, erased: Any, tmp_path: Path
) -> None:
    from safetensors import safe_open

    from sepme_engine.export.lora import export_lora

    out = tmp_path / "xl-lora.safetensors"
    report = export_lora({"a-cat": erased}, out, arch="sdxl", dtype="fp32")
    meta = report.metadata
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    with safe_open(str(out), "pt") as f:
        factors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    modules = {k.split(".")[0] for k in factors}
    assert len(modules) == 2 * 17
    # kohya's SDXL (LDM) names: level 1 = input_blocks 4, 5; level 2 = 7, 8; mid; outputs 0-5
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" in modules
    assert "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_v" in modules
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k" in modules
    assert "lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_v" in modules
    assert not any("down_blocks" in m or "up_blocks" in m for m in modules)

    fresh = copy.deepcopy(pipe)  # load_lora_weights + fuse change it
    named = dict(fresh.unet.named_modules())
    deltas = hooks.sum_deltas([erased])
    base = {n: named[n].weight.detach().clone() for n in deltas}
    fresh.load_lora_weights(str(out))
    fresh.fuse_lora()
    named = dict(fresh.unet.named_modules())
    names = ldm_attention_module_names(deltas)
    for n, d in deltas.items():
        got = named[n].weight.detach().double()
        want = base[n].double() + d.double()
        key = "lora_unet_" + names[n].replace(".", "_")
        up, down = factors[key + ".lora_up.weight"], factors[key + ".lora_down.weight"]
        # fp32 factors of ΔW (exact up to fp32 round-off of the factorisation) summed in fp32:
        # per entry a few eps32 of |W| + Σ_r |up||down|
        bound = (base[n].double().abs() + up.double().abs() @ down.double().abs()) * 2**-24
        assert bool(((got - want).abs() <= 16 * bound + 1e-30).all()), n
    for n, m in named.items():  # untouched layers are untouched
        if n.endswith("attn1.to_k"):
            assert torch.equal(m.weight, dict(pipe.unet.named_modules())[n].weight)


# --- the CLI on an SDXL base -----------------------------------------------------------------


def test_cli_import_erase_inspect_generate_export_on_sdxl(files: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sepme_cli.app import app

    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args))

    res = run("base", "add", "xl", str(files["single_file"]), "--link", "--json")
    assert res.exit_code == 0, res.output
    added = json.loads(res.stdout)
    assert added["arch"] == "sdxl" and added["profile"] == "sdxl"
    res = run("erase", "a cat", "-b", "xl", "--method", "sepme-cf", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    res = run("inspect", "-b", "xl", "--json")
    assert res.exit_code == 0, res.output
    assert "a-cat" in res.stdout

    png = tmp_path / "grid.png"
    res = run(
        "generate", "a cat", "-b", "xl", "-o", str(png), "--n", "1", "--steps", "2",
        "--compare", "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert Image.open(png).size[0] > 2 * 64  # two columns of 64-px images (upscaled)

    out = tmp_path / "out.safetensors"
    res = run("export", str(out), "-b", "xl", "--dtype", "fp32")
    assert res.exit_code == 0, res.output
    assert inspect_source(out).arch == "sdxl"
    lora = tmp_path / "out-lora.safetensors"
    res = run("export", str(lora), "-b", "xl", "--format", "lora")
    assert res.exit_code == 0, res.output

    # bad inputs as for SD 1.x: one clear line, exit 1 (2 for an option out of range, a usage
    # error), nothing written
    listed = json.loads(run("list", "-b", "xl", "--json").stdout)
    assert [e["concept"] for e in listed] == ["a-cat"]
    for args, needle, code in (
        (("erase", "  ", "-b", "xl", "--device", "cpu"), "empty", 1),
        (("erase", "word " * 20, "-b", "xl", "--device", "cpu"), "tokens long", 1),
        (("export", str(out), "-b", "xl"), "already exists", 1),
        (("export", str(tmp_path / "r.safetensors"), "-b", "xl", "--format", "lora",
          "--rank", "0"), "rank", 2),
    ):  # fmt: skip
        res = run(*args)
        assert res.exit_code == code, (args, res.output)
        assert needle in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "r.safetensors").exists()
    assert json.loads(run("list", "-b", "xl", "--json").stdout) == listed


def test_gpu_check_sdxl_iteration_path_runs_at_reduced_width(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """benchmarks/gpu_check.sh builds a random SDXL-size pipeline (`build_sdxl_pipe`) and times
    `bench_iteration(..., "sdxl")` on a GPU; the same code here with the shipped configs'
    widths reduced as in tests/_tiny.make_sdxl_pipeline (CPU, fp32)."""
    import benchmarks.export_bench as eb
    from benchmarks.perf import bench_iteration, render
    from sepme_engine.models import configs

    small = configs.pipeline_configs(shared_pipeline("sdxl", seed=0, max_length=8))
    monkeypatch.setattr(configs, "shipped_configs", lambda arch: small if arch == "sdxl" else {})
    built = eb.build_sdxl_pipe(seed=0)
    assert type(built).__name__ == "StableDiffusionXLPipeline"
    assert built.tokenizer_2.pad_token == "!" and built.unet.dtype == torch.float32
    out = bench_iteration("cpu", "fp32", 2, "sdxl", pipe=built)
    assert out["arch"] == "sdxl" and out["latent_size"] == 8 and out["iterations"] == 2
    assert len(out["s_per_iteration_all"]) == 2 and out["s_per_iteration_median"] > 0
    res = {"device": "cpu", "dtype": "fp32", "argv": [], "machine": "x", "iteration-sdxl": out}
    assert "SDXL base size" in render(res)
