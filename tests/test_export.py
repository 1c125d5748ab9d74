"""Export of a composition as an LDM single file and as a diffusers folder, loaded back by
diffusers (offline) and compared weight by weight with the composition cast to the export dtype."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from sepme_engine.delta.layers import kv_shapes
from sepme_engine.errors import AlreadyExists, BaseMismatch, InvalidInput
from sepme_engine.export._atomic import INCOMPLETE_SUFFIX
from sepme_engine.export.diffusers_dir import export_diffusers
from sepme_engine.export.modelspec import modelspec_metadata
from sepme_engine.export.report import EXPORT_DTYPES
from sepme_engine.export.single_file import export_single_file
from sepme_engine.models.configs import pipeline_configs, write_config_dir
from tests._tiny import make_tiny_pipeline, shared_tiny

PROVENANCE = {
    "sepme.schema_version": "1",
    "sepme.version": "0.1.0",
    "sepme.base_digest": "sha256:" + "ab" * 32,
    "sepme.increments": json.dumps([{"name": "van-gogh", "method": "sepme", "seed": 0}]),
}


def _pipe(arch: str) -> Any:
    torch.set_num_threads(1)
    return shared_tiny(arch, seed=3)


def _deltas(pipe: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in kv_shapes(pipe.unet).items()}


def _expected(pipe: Any, deltas: dict[str, torch.Tensor], comp: str, dt: torch.dtype) -> dict:
    out = {}
    for k, w in getattr(pipe, comp).state_dict().items():
        d = deltas.get(k[: -len(".weight")]) if comp == "unet" and k.endswith(".weight") else None
        if d is not None:
            out[k] = (w.to(torch.float32) + d).to(dt)
        else:
            out[k] = w.to(dt) if w.is_floating_point() else w
    return out


def _assert_weights_equal(pipe: Any, loaded: Any, deltas: dict, dt: torch.dtype) -> None:
    for comp in ("unet", "vae", "text_encoder"):
        expected = _expected(pipe, deltas, comp, dt)
        got = getattr(loaded, comp).state_dict()
        assert set(got) == set(expected), comp
        for k, e in expected.items():
            g = got[k].to(dt) if got[k].is_floating_point() else got[k]
            assert torch.equal(g, e), f"{comp}.{k}"


@pytest.mark.parametrize(("arch", "dtype"), [("sd1", "fp16"), ("sd2", "bf16"), ("sd2-v", "fp32")])
def test_single_file_loads_back_as_the_composition(tmp_path: Path, arch: str, dtype: str) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = _pipe(arch)
    deltas = _deltas(pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    ticks: list[tuple[int, int]] = []
    out = tmp_path / "erased.safetensors"
    rep = export_single_file(
        pipe,
        deltas,
        out,
        arch=arch,
        dtype=dtype,
        metadata=PROVENANCE,
        erased=["van gogh", "snoopy"],
        progress=lambda d, t: ticks.append((d, t)),
    )
    assert rep.format == "ldm" and rep.dtype == dtype and rep.path == out
    assert rep.bytes_written == out.stat().st_size
    assert ticks[-1] == (rep.n_tensors, rep.n_tensors) and len(ticks) == rep.n_tensors
    assert [p.name for p in tmp_path.iterdir()] == ["erased.safetensors"]
    # the pipeline itself is untouched
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())

    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        st_dtypes = {f.get_slice(k).get_dtype() for k in keys}
    text_prefix = "cond_stage_model.transformer." if arch == "sd1" else "cond_stage_model.model."
    for prefix in ("model.diffusion_model.", "first_stage_model.", text_prefix):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert st_dtypes == {{"fp16": "F16", "bf16": "BF16", "fp32": "F32"}[dtype]}
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    for k, v in PROVENANCE.items():
        assert meta[k] == v
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert (
        meta["modelspec.architecture"]
        == {
            "sd1": "stable-diffusion-v1",
            "sd2": "stable-diffusion-v2-512",
            "sd2-v": "stable-diffusion-v2-768-v",
        }[arch]
    )
    assert meta["modelspec.prediction_type"] == ("v" if arch == "sd2-v" else "epsilon")
    assert "van gogh" in meta["modelspec.description"] and "snoopy" in meta["modelspec.description"]
    assert meta["modelspec.resolution"] == "32x32"  # tiny: sample 16 x VAE scale 2
    for key in ("modelspec.implementation", "modelspec.title", "modelspec.date"):
        assert meta[key]

    # diffusers re-imports it offline with the configs embedded in the file
    cfg = write_config_dir(json.loads(meta["sepme.configs"]), tmp_path / "cfg")
    loaded = StableDiffusionPipeline.from_single_file(
        str(out), config=str(cfg), local_files_only=True
    )
    assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
    _assert_weights_equal(pipe, loaded, deltas, EXPORT_DTYPES[dtype])


def test_sd2_file_gets_the_24th_openclip_block_and_still_loads(tmp_path: Path) -> None:
    """Real SD2 text encoders have diffusers' 23 layers: the file gets OpenCLIP's inert 24th block
    and an identity text_projection (as the original files have), which diffusers ignores."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    pipe = make_tiny_pipeline("sd2", seed=4)
    cfg = pipe.text_encoder.config
    cfg.num_hidden_layers = 23
    torch.manual_seed(0)
    pipe.text_encoder = CLIPTextModel(cfg).eval()
    out = tmp_path / "sd2.safetensors"
    deltas = _deltas(pipe, seed=2)
    export_single_file(pipe, deltas, out, arch="sd2", dtype="fp16")
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        proj = f.get_tensor("cond_stage_model.model.text_projection")
        block = f.get_tensor("cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.weight")
    assert "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight" in keys
    assert torch.equal(proj, torch.eye(32, dtype=torch.float16))
    assert not block.any()
    with safe_open(str(out), framework="pt") as f:
        configs = json.loads(f.metadata()["sepme.configs"])
    loaded = StableDiffusionPipeline.from_single_file(
        str(out), config=str(write_config_dir(configs, tmp_path / "cfg")), local_files_only=True
    )
    _assert_weights_equal(pipe, loaded, deltas, torch.float16)
    with pytest.raises(InvalidInput):
        export_single_file(
            _pipe("sd2"), {}, tmp_path / "x.safetensors", arch="sd2", pad_openclip=True
        )


def test_single_file_sha256_and_caller_metadata_wins(tmp_path: Path) -> None:
    import hashlib

    pipe = _pipe("sd1")
    out = tmp_path / "h.safetensors"
    export_single_file(
        pipe, {}, out, arch="sd1", metadata={"modelspec.title": "My Model"}, sha256=True
    )
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["modelspec.title"] == "My Model"
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(raw[8 + n :]).hexdigest()
    assert meta["sepme.configs"] == json.dumps(pipeline_configs(pipe), sort_keys=True)


def test_single_file_refuses_existing_output_and_mismatched_deltas(tmp_path: Path) -> None:
    pipe = _pipe("sd1")
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(AlreadyExists):
        export_single_file(pipe, {}, out, arch="sd1")
    assert out.read_bytes() == b"keep me"
    name = next(iter(kv_shapes(pipe.unet)))
    with pytest.raises(BaseMismatch):
        export_single_file(pipe, {name: torch.zeros(3, 3)}, out, arch="sd1", force=True)
    with pytest.raises(BaseMismatch):
        export_single_file(pipe, {"no.such.layer": torch.zeros(3, 3)}, out, arch="sd1", force=True)
    with pytest.raises(InvalidInput):
        export_single_file(pipe, {}, out, arch="sd1", dtype="int8", force=True)
    with pytest.raises(InvalidInput):  # an epsilon pipeline is not sd2-v
        export_single_file(_pipe("sd2"), {}, out, arch="sd2-v", force=True)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_single_file_interrupted_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sepme_engine.export.safetensors_writer as writer

    pipe = _pipe("sd1")
    real = writer._raw_bytes
    calls = 0

    def flaky(t: torch.Tensor) -> memoryview:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise OSError(28, "No space left on device")
        return real(t)

    monkeypatch.setattr(writer, "_raw_bytes", flaky)
    out = tmp_path / "x.safetensors"
    with pytest.raises(OSError, match="No space"):
        export_single_file(pipe, _deltas(pipe), out, arch="sd1")
    assert calls == 50
    assert list(tmp_path.iterdir()) == []


def test_diffusers_folder_loads_back_as_the_composition(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = _pipe("sd2-v")
    deltas = _deltas(pipe, seed=1)
    out = tmp_path / "pipe"
    rep = export_diffusers(pipe, deltas, out, dtype="fp16", metadata=PROVENANCE)
    assert rep.format == "diffusers" and rep.path == out
    assert rep.n_tensors == sum(
        len(getattr(pipe, c).state_dict()) for c in ("unet", "vae", "text_encoder")
    )
    assert (out / "model_index.json").is_file()
    assert json.loads((out / "sepme_export.json").read_text())["metadata"] == PROVENANCE
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.metadata()["sepme.base_digest"] == PROVENANCE["sepme.base_digest"]
    loaded = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.tokenizer.pad_token == pipe.tokenizer.pad_token == "!"
    _assert_weights_equal(pipe, loaded, deltas, torch.float16)

    # an existing folder is replaced only with force, and a failure keeps the old one
    with pytest.raises(AlreadyExists):
        export_diffusers(pipe, {}, out)
    import sepme_engine.export.diffusers_dir as ddir

    def broken(*a: Any, **k: Any) -> int:
        raise KeyboardInterrupt

    mp = pytest.MonkeyPatch()
    mp.setattr(ddir, "write_safetensors", broken)
    try:
        with pytest.raises(KeyboardInterrupt):
            export_diffusers(pipe, {}, out, force=True)
    finally:
        mp.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    assert not any(INCOMPLETE_SUFFIX in p.name for p in out.rglob("*"))
    _assert_weights_equal(
        pipe,
        StableDiffusionPipeline.from_pretrained(out, local_files_only=True),
        deltas,
        torch.float16,
    )
    export_diffusers(pipe, {}, out, dtype="fp32", force=True)
    _assert_weights_equal(
        pipe, StableDiffusionPipeline.from_pretrained(out, local_files_only=True), {}, torch.float32
    )


def test_modelspec_metadata() -> None:
    m = modelspec_metadata("sd2-v", "v_prediction", "T", ["a", "b"], date="2025-01-02")
    assert m == {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": "T",
        "modelspec.description": "Stable Diffusion with concepts erased by sepme (SepME): a, b.",
        "modelspec.date": "2025-01-02",
        "modelspec.resolution": "768x768",
        "modelspec.prediction_type": "v",
    }
    lora = modelspec_metadata("sd1", lora=True)
    assert lora["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert lora["modelspec.implementation"] == "diffusers"
    assert lora["modelspec.resolution"] == "512x512"
    with pytest.raises(InvalidInput):
        modelspec_metadata("sd3")


def test_importing_the_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sepme_engine.export, sepme_engine.export.run; "
        "from sepme_engine.export.modelspec import modelspec_metadata; "
        "modelspec_metadata('sd1'); assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_exports_carry_no_local_path_and_load_with_the_slow_tokenizer(tmp_path: Path) -> None:
    """A pipeline loaded from a user's folder: its path must not leak into the export; the folder
    holds `text_model.`-prefixed text-encoder keys and the slow CLIPTokenizer files."""
    import hashlib

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    src = tmp_path / "users-private-folder"
    _pipe("sd1").save_pretrained(src)
    pipe = StableDiffusionPipeline.from_pretrained(src, local_files_only=True)
    assert str(pipe.config._name_or_path) == str(src)  # what used to be written out

    out = tmp_path / "folder"
    export_diffusers(pipe, {}, out, dtype="fp32", profile="sd1")
    for p in out.rglob("*.json"):
        text = p.read_text()
        assert "users-private-folder" not in text and "_name_or_path" not in text, p
    index = json.loads((out / "model_index.json").read_text())
    assert index["_sepme"] == {"profile": "sd1"}
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)
    names = {p.name for p in (out / "tokenizer").iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    slow = CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert slow("a red cat").input_ids == pipe.tokenizer("a red cat").input_ids
    assert slow.model_max_length == pipe.tokenizer.model_max_length

    single = tmp_path / "m.safetensors"
    export_single_file(pipe, {}, single, arch="sd1", sha256=True)
    with safe_open(str(single), "pt") as f:
        meta = f.metadata()
    assert "users-private-folder" not in json.dumps(meta) and "_name_or_path" not in json.dumps(
        meta
    )
    raw = single.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(raw[8 + n :]).hexdigest()
