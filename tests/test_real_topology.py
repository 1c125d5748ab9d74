"""Real SD 1.x / 2.x checkpoints end to end, on models with their real topology at reduced width.

A user holds an A1111/ComfyUI single file. Here one is built from the shipped SD 1.5 and SD 2.1
(768-v) configs (4 levels, 2 layers per block, attention in the first three levels, the real LDM
block indices) with every width reduced, imported through the CLI, erased a few iterations,
exported in every format and reloaded by the programs users run: diffusers (`from_single_file`
with the local config, `from_pretrained`, `load_lora_weights` + fuse), and the key names kohya,
ComfyUI and A1111 expect, written below from their published conventions.

One flow per architecture is built once per module (import, erase, three exports); the tests read
it. The SD 2.x file carries no prediction type anywhere (no scheduler setting, no metadata, an
innocent name): its v-prediction must come from the weights, as ComfyUI decides.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine import bases
from sepme_engine.compose import composition_deltas
from sepme_engine.models.arch import cross_attention_kv
from sepme_engine.models.configs import pipeline_configs, write_config_dir
from sepme_engine.models.ldm_keys import pipeline_to_ldm
from sepme_engine.store import Store
from tests._tiny import make_real_topology_pipeline
from tests._tol import EPS32, gamma

runner = CliRunner()
FAST = ["--steps", "3", "--images", "1", "--lr", "0.1", "--beta", "0.01", "--seed", "0"]
V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def run(*args: str):
    return runner.invoke(app, list(args))


def real_pipeline(arch: str) -> Any:
    torch.set_num_threads(1)
    pipe = make_real_topology_pipeline(arch, seed=11, max_length=8)
    if arch == "sd2-v":
        # what v-prediction training leaves in the last transformer block (ComfyUI's probe); a
        # freshly initialised (or an epsilon 2.x) model has this LayerNorm bias near zero
        with torch.no_grad():
            bias = pipe.unet.up_blocks[3].attentions[2].transformer_blocks[0].norm1.bias
            bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(5)) * 0.2)
    return pipe


def write_user_file(pipe: Any, arch: str, path: Path, *, predict: bool = False) -> Path:
    """An LDM single file as A1111/ComfyUI hold it. Reduced widths need their diffusers configs
    (embedded as `sepme.configs`); without `predict` the scheduler's prediction type is left out,
    so nothing but the weights tells epsilon from v."""
    cfgs = pipeline_configs(pipe)
    if not predict:
        cfgs["scheduler"].pop("prediction_type", None)
    sd = {k: v.contiguous() for k, v in pipeline_to_ldm(pipe, arch).items()}
    save_file(sd, str(path), metadata={"sepme.configs": json.dumps(cfgs)})
    return path


@dataclass
class Flow:
    arch: str
    home: Path
    pipe: Any  # the original model
    source: Path
    added: dict[str, Any]  # `base add --json`
    ldm: Path
    folder: Path
    lora: Path
    want_unet: dict[str, torch.Tensor]  # the composition's UNet weights, float32


@pytest.fixture(scope="module", params=["sd1", "sd2-v"])
def flow(request, tmp_path_factory) -> Any:
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"real-{arch}")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEPME_HOME", str(home))
        pipe = real_pipeline(arch)
        source = write_user_file(pipe, arch, tmp / "model.safetensors")
        res = run("base", "add", "real", str(source), "--json")
        assert res.exit_code == 0, res.output
        added = json.loads(res.stdout)
        assert run("base", "use", "real").exit_code == 0
        home.joinpath("config.toml").write_text("[erase]\nimage_steps = 2\n", encoding="utf-8")
        res = run("erase", "cat", *FAST)
        assert res.exit_code == 0, res.output
        out = tmp / "out"
        out.mkdir()
        ldm, folder, lora = (
            out / "erased.safetensors",
            out / "erased",
            out / "erased-lora.safetensors",
        )
        for args in (
            (str(ldm), "--dtype", "fp32", "--hash"),
            (str(folder), "--format", "diffusers", "--dtype", "fp32"),
            (str(lora), "--format", "lora", "--dtype", "fp32"),
        ):
            res = run("export", *args)
            assert res.exit_code == 0, res.output
        store = Store(home)
        info = bases.get_base(store, "real")
        deltas = composition_deltas(store, info, ["cat"])
        assert deltas and all(float(d.abs().max()) > 0 for d in deltas.values())
        want = {}
        for k, v in pipe.unet.state_dict().items():
            mod = k[: -len(".weight")]
            want[k] = v.float() + deltas[mod] if mod in deltas else v.float()
        yield Flow(arch, home, pipe, source, added, ldm, folder, lora, want)


@pytest.fixture
def use_flow_store(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> Flow:
    monkeypatch.setenv("SEPME_HOME", str(flow.home))
    return flow


def expected_layers(pipe: Any) -> list[list[Any]]:
    return [[n, list(m.weight.shape)] for n, m in cross_attention_kv(pipe.unet)]


# --- conventions of the programs users run, written from their documentation -------------------

# LDM (CompVis / A1111 / ComfyUI / kohya) UNet blocks of SD 1.x and 2.x: 12 input blocks (conv_in,
# then per level two resnet(+transformer) blocks and a downsampler, none after the last level),
# 3 middle blocks, 12 output blocks (3 per level, an upsampler closing all but the last level).
LDM_UNET_BLOCKS = (
    {"input_blocks.0.0", "middle_block.0", "middle_block.1", "middle_block.2"}
    | {f"input_blocks.{i}.{j}" for i in (1, 2, 4, 5, 7, 8) for j in (0, 1)}
    | {f"input_blocks.{i}.0" for i in (3, 6, 9, 10, 11)}
    | {f"output_blocks.{i}.0" for i in range(12)}
    | {f"output_blocks.{i}.1" for i in range(3, 12)}
    | {"output_blocks.2.1", "output_blocks.5.2", "output_blocks.8.2"}
    | {"time_embed.0", "time_embed.2", "out.0", "out.2"}
)
# cross-attention in the first three levels: input 1,2,4,5,7,8; middle; output 3..11
LDM_ATTN2 = (
    {f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)}
    | {"middle_block.1"}
    | {f"output_blocks.{i}.1" for i in range(3, 12)}
)


def ldm_unet_blocks(keys: list[str]) -> set[str]:
    """`input_blocks.4.1`, `middle_block.1`, `time_embed.0`...: the UNet blocks of an LDM file."""
    out = set()
    for k in keys:
        if k.startswith("model.diffusion_model."):
            parts = k[len("model.diffusion_model.") :].split(".")
            depth = 3 if parts[0] in ("input_blocks", "output_blocks") else 2
            out.add(".".join(parts[:depth]))
    return out


def a1111_lora_target(name: str) -> str | None:
    """A1111's `convert_diffusers_name_to_compvis` for UNet LoRA modules (its regexes restated):
    down_blocks_{b}_attentions_{a} -> input_blocks_{1 + 3b + a}_1, mid_block_attentions_0 ->
    middle_block_1, up_blocks_{b}_attentions_{a} -> output_blocks_{3b + a}_1."""
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)", name):
        return f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    if m := re.fullmatch(r"lora_unet_mid_block_attentions_0_(.+)", name):
        return f"diffusion_model_middle_block_1_{m[1]}"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)", name):
        return f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    return None


def tensor_data_sha256(path: Path) -> str:
    """ModelSpec's reference hash: SHA-256 of everything after the safetensors header."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        return "0x" + hashlib.sha256(f.read()).hexdigest()


def assert_no_local_paths(text: str, flow: Flow) -> None:
    for p in (flow.source.parent, flow.home):
        assert str(p) not in text
    assert "_name_or_path" not in text


# --- 1: the import records the real cross-attention names -----------------------------------


def test_single_file_import_names_the_real_cross_attention_layers(use_flow_store: Flow) -> None:
    flow = use_flow_store
    assert flow.added["arch"] == flow.arch
    assert flow.added["cross_attn_layers"] == expected_layers(flow.pipe)
    assert len(flow.added["cross_attn_layers"]) == 32  # 16 attn2 modules, to_k and to_v
    # and `inspect` works on the erased single-file base (it failed with "base mismatch")
    res = run("inspect", "--json")
    assert res.exit_code == 0, res.output


def test_sd2_v_prediction_comes_from_the_weights(use_flow_store: Flow, tmp_path: Path) -> None:
    from sepme_engine.models.detect import inspect_source

    flow = use_flow_store
    if flow.arch == "sd1":
        assert flow.added["prediction_type"] == "epsilon"
        return
    assert (flow.added["prediction_type"], flow.added["arch"]) == ("v_prediction", "sd2-v")
    loaded = bases.load_base(Store(flow.home), "real")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    # an epsilon model named like the official 768-v file stays epsilon
    eps = make_real_topology_pipeline("sd2", seed=1, max_length=8)
    named = write_user_file(eps, "sd2", tmp_path / "v2-1_768-ema-pruned.safetensors")
    info = inspect_source(named)
    assert (info.prediction_type, info.prediction_source) == ("epsilon", "weights")
    # metadata first: a modelspec prediction type wins over the weights
    sd = load_file(str(flow.source))
    with safe_open(str(flow.source), "pt") as f:
        meta = dict(f.metadata())
    save_file(sd, str(tmp_path / "m.safetensors"), {**meta, "modelspec.prediction_type": "epsilon"})
    assert inspect_source(tmp_path / "m.safetensors").prediction_source == "metadata"


# --- exports -----------------------------------------------------------------------------------


def test_ldm_export_loads_in_diffusers_with_the_composition(
    use_flow_store: Flow, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    flow = use_flow_store
    cfg = write_config_dir(pipeline_configs(flow.pipe), tmp_path / "config")
    loaded = StableDiffusionPipeline.from_single_file(
        str(flow.ldm), config=str(cfg), local_files_only=True
    )
    got = loaded.unet.state_dict()
    assert got.keys() == flow.want_unet.keys()
    for k, v in flow.want_unet.items():
        assert torch.equal(got[k], v), k  # fp32 export of W + ΔW: bit-exact
    for comp in ("vae", "text_encoder"):
        a, b = getattr(flow.pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), comp
    # the LDM key layout A1111 / ComfyUI / kohya read
    with safe_open(str(flow.ldm), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert ldm_unet_blocks(keys) == LDM_UNET_BLOCKS
    attn2 = {
        k[len("model.diffusion_model.") :].split(".transformer_blocks.")[0]
        for k in keys
        if k.startswith("model.diffusion_model.") and ".attn2.to_k." in k
    }
    assert attn2 == LDM_ATTN2
    vae_blocks = {
        m[0] for k in keys if (m := re.match(r"first_stage_model\.\w+\.\w+\.\d+\.\w+", k))
    }
    assert {f"first_stage_model.encoder.down.{i}.block" for i in range(4)} <= vae_blocks
    assert {f"first_stage_model.decoder.up.{i}.upsample" for i in (1, 2, 3)} <= vae_blocks
    if flow.arch == "sd1":
        text = [k for k in keys if k.startswith("cond_stage_model.")]
        assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in text)
    else:
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
        assert "cond_stage_model.model.token_embedding.weight" in keys
    # metadata: the hash of the tensor data, no local paths, the profile
    assert meta["modelspec.hash_sha256"] == tensor_data_sha256(flow.ldm)
    assert meta["modelspec.architecture"] == (
        "stable-diffusion-v1" if flow.arch == "sd1" else "stable-diffusion-v2-768-v"
    )
    assert meta["modelspec.prediction_type"] == ("epsilon" if flow.arch == "sd1" else "v")
    assert meta["sepme.profile"] == flow.arch
    assert_no_local_paths(json.dumps(meta), flow)


def test_diffusers_folder_loads_with_the_composition(use_flow_store: Flow) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    flow = use_flow_store
    loaded = StableDiffusionPipeline.from_pretrained(str(flow.folder), local_files_only=True)
    got = loaded.unet.state_dict()
    assert all(torch.equal(got[k], v) for k, v in flow.want_unet.items())
    for comp in ("vae", "text_encoder"):
        a, b = getattr(flow.pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), comp
    assert loaded.scheduler.config.prediction_type == flow.pipe.scheduler.config.prediction_type
    # text encoder keys in the layout transformers 4.x and 5.x both read
    with safe_open(str(flow.folder / "text_encoder" / "model.safetensors"), "pt") as f:
        te_keys = list(f.keys())
    assert te_keys and all(k.startswith("text_model.") for k in te_keys)
    # the slow tokenizer model_index.json names, from its own files
    index = json.loads((flow.folder / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    tok_dir = flow.folder / "tokenizer"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / name).is_file(), name
    assert not (tok_dir / "tokenizer.json").exists()
    slow = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    assert slow("a cat").input_ids == flow.pipe.tokenizer("a cat").input_ids
    assert loaded.tokenizer("a cat").input_ids == flow.pipe.tokenizer("a cat").input_ids
    # no local path in any JSON file; the profile is recorded
    for p in flow.folder.rglob("*.json"):
        assert_no_local_paths(p.read_text(), flow)
    assert index["_sepme"] == {"profile": flow.arch}


def test_lora_matches_kohya_comfyui_a1111_and_fuses_to_the_composition(
    use_flow_store: Flow,
) -> None:
    flow = use_flow_store
    with safe_open(str(flow.lora), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    # kohya / ComfyUI: lora_unet_ + the diffusers module path with "_" for "."
    names = {n for n, _ in cross_attention_kv(flow.pipe.unet)}
    assert modules == {"lora_unet_" + n.replace(".", "_") for n in names}
    assert keys == {
        f"{m}.{s}" for m in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    # A1111: every module maps onto a weight of the LDM file
    with safe_open(str(flow.ldm), "pt") as f:
        ldm = {k[: -len(".weight")].replace(".", "_") for k in f.keys() if k.endswith(".weight")}
    targets = {a1111_lora_target(m) for m in modules}
    assert None not in targets and {"model_" + t for t in targets if t} <= ldm
    # metadata as kohya's sd-scripts write it (sai_model_spec.py, train_network.py)
    v = flow.arch == "sd2-v"
    expected = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v/lora"
        if v
        else "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.resolution": "768x768" if v else "512x512",
        "modelspec.prediction_type": "v" if v else "epsilon",
        "ss_network_module": "networks.lora",
        "ss_base_model_version": "sd_v2_v" if v else "sd_v1",
        "ss_v2": str(v),
        "ss_v_parameterization": str(v),
        "ss_network_train_unet_only": "True",
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["ss_network_dim"] == meta["ss_network_alpha"]
    assert "null" not in meta.get("ss_network_args", "{}")
    assert meta["modelspec.hash_sha256"] == tensor_data_sha256(flow.lora)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d.*", meta["modelspec.date"])
    assert_no_local_paths(json.dumps(meta), flow)
    # diffusers: load + fuse gives the composition
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(flow.folder), local_files_only=True)
    for k, w in flow.pipe.unet.state_dict().items():  # back to the base weights
        pipe.unet.state_dict()[k].copy_(w)
    pipe.load_lora_weights(str(flow.lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    got = pipe.unet.state_dict()
    base = flow.pipe.unet.state_dict()
    with safe_open(str(flow.lora), "pt") as f:
        factors = {k: f.get_tensor(k) for k in f.keys()}
    for k, want in flow.want_unet.items():
        # Both sides are float32 evaluations of W + D (D exact): the fused LoRA a rank-r product
        # of balanced SVD factors (Σ_i|up_ji||down_il| ≤ ‖D‖₂ ≤ ‖D‖_F), the composition a product
        # C·S with orthonormal S (Σ_i|C_ji||S_il| ≤ √k·‖D_j‖, k = in_features ≥ m). Each is
        # within γ_{k+3} of those sums (any summation order), plus one rounding of the add to W
        # (EPS32 of |W| and |W + D|); twice that for the two sides.
        m = "lora_unet_" + k.removesuffix(".weight").replace(".", "_")
        if f"{m}.alpha" not in factors:  # not a LoRA module: the base weight, untouched
            assert torch.equal(got[k], want), k
            continue
        d = want.double() - base[k].double()
        n_in = d.shape[1]
        rows = d.norm(dim=1, keepdim=True)
        bound = 2 * (
            gamma(n_in + 3) * (rows * n_in**0.5 + d.norm())
            + EPS32 * (base[k].double().abs() + want.double().abs())
        )
        gap = (got[k].double() - want.double()).abs()
        assert bool((gap <= bound).all()), (k, float(gap.max()), float(bound.min()))
