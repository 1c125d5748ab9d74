"""Tiny, seeded Stable Diffusion-architecture pipelines built offline (diffusers' get_dummy_components style).

`arch` is "sd1" (CLIP text encoder, eos padding, epsilon), "sd2" (OpenCLIP-style: `!` padding,
linear projections in the transformer blocks, epsilon) or "sd2-v" (as sd2 with v-prediction).

`make_tiny_pipeline` is the smallest model (2 levels, 1 layer per block); `make_real_topology_pipeline`
has the real SD 1.x / 2.x topology (the shipped configs: 4 levels, 2 layers per block, attention in
the first three levels, so the real LDM block indices input_blocks.1,2,4,5,7,8 / output_blocks.3-11)
at reduced width.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

TEXT_WIDTH = 32
MAX_LENGTH = 77


def make_tiny_pipeline(arch: str = "sd1", seed: int = 0, max_length: int = MAX_LENGTH) -> Any:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from sepme_engine.models.tokenizer import VOCAB_SIZE, clip_tokenizer

    sd2 = arch.startswith("sd2")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=max_length,
        hidden_act="gelu" if sd2 else "quick_gelu",
        projection_dim=TEXT_WIDTH,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    tokenizer = clip_tokenizer(pad_token="!" if sd2 else "<|endoftext|>", max_length=max_length)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if arch == "sd2-v" else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


REAL_UNET_WIDTHS = [16, 32, 32, 32]
REAL_VAE_WIDTHS = [8, 16, 16, 16]
REAL_GROUPS = 8


def _reduced(cfg: dict[str, Any], drop: tuple[str, ...] = (), **updates: Any) -> dict[str, Any]:
    """A shipped diffusers/transformers config without its `_` keys (and `drop`), widths replaced."""
    out = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in drop}
    out.update(updates)
    return out


def _shipped_parts(cfgs: dict[str, Any], unet_cfg: dict[str, Any], seed: int) -> tuple[Any, ...]:
    """UNet (seed), reduced VAE (seed + 1) and the shipped scheduler, as every real-topology
    builder makes them."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae_cfg = _reduced(
        cfgs["vae"], block_out_channels=REAL_VAE_WIDTHS, norm_num_groups=REAL_GROUPS, sample_size=64
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_cfg)
    sched_cfg = cfgs["scheduler"]
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    return unet.eval(), vae.eval(), scheduler


def _text_encoder(cls: Any, cfg: dict[str, Any], width: int, layers: int, max_length: int) -> Any:
    from transformers import CLIPTextConfig

    text_cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype")}
    text_cfg.update(
        hidden_size=width,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=layers,
        projection_dim=width,
        max_position_embeddings=max_length,
    )
    return cls(CLIPTextConfig(**text_cfg)).eval()


def make_real_topology_pipeline(
    arch: str = "sd1", seed: int = 0, max_length: int = MAX_LENGTH, text_layers: int = 2
) -> Any:
    """The shipped SD 1.5 / 2.1-base / 2.1 (768-v) configs with every width reduced.

    Topology (block types, layers per block, attention levels, linear vs conv projections,
    VAE levels) is read from `sepme_engine/models/shipped`, only channel counts, heads and the
    text encoder's size are changed, so LDM key names are those of the real checkpoints.
    """
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from sepme_engine.models.configs import shipped_configs
    from sepme_engine.models.tokenizer import clip_tokenizer

    cfgs = shipped_configs(arch)
    sd2 = arch.startswith("sd2")
    unet_cfg = _reduced(
        cfgs["unet"],
        block_out_channels=REAL_UNET_WIDTHS,
        norm_num_groups=REAL_GROUPS,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=[2, 2, 4, 4] if sd2 else 2,
        sample_size=8,
    )
    unet, vae, scheduler = _shipped_parts(cfgs, unet_cfg, seed)
    torch.manual_seed(seed + 2)
    text_encoder = _text_encoder(
        CLIPTextModel, cfgs["text_encoder"], TEXT_WIDTH, text_layers, max_length
    )
    clip = cfgs["tokenizer"]["clip"]
    tokenizer = clip_tokenizer(pad_token=clip["pad_token"], max_length=max_length)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


XL_UNET_WIDTHS = [16, 32, 32]
XL_TEXT_WIDTHS = (16, 32)  # CLIP ViT-L stand-in, OpenCLIP bigG stand-in: 48-d cross-attention
XL_TIME_DIM = 8


def make_sdxl_pipeline(seed: int = 0, max_length: int = MAX_LENGTH) -> Any:
    """The shipped SDXL base 1.0 configs with every width reduced (a StableDiffusionXLPipeline).

    Real topology: 3 levels (DownBlock2D then two cross-attention levels), 2 layers per block,
    transformer depth [1, 1, 2] (SDXL's [1, 2, 10] scaled down: the last level and the mid
    block have 2 transformer blocks, so `transformer_blocks.1` names exist as in the real file),
    linear projections, the text_time addition embedding (pooled text + 6 time ids), a CLIP
    text encoder and a CLIPTextModelWithProjection whose penultimate hidden states are
    concatenated, their two tokenizers (eos / "!" padding), the real Euler scheduler.
    """
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sepme_engine.models.configs import shipped_configs
    from sepme_engine.models.tokenizer import clip_tokenizer

    cfgs = shipped_configs("sdxl")
    w1, w2 = XL_TEXT_WIDTHS
    unet_cfg = _reduced(
        cfgs["unet"],
        block_out_channels=XL_UNET_WIDTHS,
        norm_num_groups=REAL_GROUPS,
        cross_attention_dim=w1 + w2,
        attention_head_dim=[2, 2, 4],
        transformer_layers_per_block=[1, 1, 2],
        addition_time_embed_dim=XL_TIME_DIM,
        projection_class_embeddings_input_dim=6 * XL_TIME_DIM + w2,
        sample_size=8,
    )
    unet, vae, scheduler = _shipped_parts(cfgs, unet_cfg, seed)
    encoders = []
    for i, (name, cls, width) in enumerate(
        (("text_encoder", CLIPTextModel, w1), ("text_encoder_2", CLIPTextModelWithProjection, w2))
    ):
        torch.manual_seed(seed + 2 + i)
        encoders.append(_text_encoder(cls, cfgs[name], width, 3, max_length))
    tokenizers = [
        clip_tokenizer(pad_token=cfgs[t]["clip"]["pad_token"], max_length=max_length)
        for t in ("tokenizer", "tokenizer_2")
    ]
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- pipelines shared between tests ------------------------------------------------------------

_BUILDERS = {
    "tiny": make_tiny_pipeline,
    "real": make_real_topology_pipeline,
    "sdxl": make_sdxl_pipeline,
}
_SHARED: dict[tuple[Any, ...], tuple[Any, str]] = {}
TOUCHED: list[Any] = []  # handed out during the current test (conftest checks them after it)


def fingerprint(pipe: Any) -> str:
    """SHA-256 of everything a test could leave changed on a pipeline: every weight and buffer
    (bytes), dtype, device, each module's class and train/eval mode, the UNet's hooks and
    attention processors, each parameter's requires_grad."""
    h = hashlib.sha256()
    for comp_name, comp in sorted(pipe.components.items()):
        if not isinstance(comp, torch.nn.Module):
            continue
        for name, mod in comp.named_modules():
            # hooks on the UNet, where sepme and tests put theirs (transformers >= 5 adds its own
            # output-recording hooks to a text encoder on its first call and keeps them)
            hooks = (len(mod._forward_hooks), len(mod._forward_pre_hooks)) * (comp_name == "unet")
            h.update(f"{comp_name}.{name}:{type(mod).__qualname__}:{mod.training}:{hooks}".encode())
        for name, p in comp.named_parameters():
            h.update(f"{comp_name}.{name}:{p.requires_grad}".encode())
        for name, t in comp.state_dict().items():
            h.update(f"{comp_name}.{name}:{t.dtype}:{t.device}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    unet = getattr(pipe, "unet", None)
    if unet is not None and hasattr(unet, "attn_processors"):
        for name, proc in sorted(unet.attn_processors.items()):
            h.update(f"{name}:{type(proc).__qualname__}".encode())
    return h.hexdigest()


def shared_pipeline(kind: str = "tiny", **kwargs: Any) -> Any:
    """One pipeline per (builder, arguments) for the whole session (its fingerprint at build time
    is kept). Tests must not change it (`_shared_pipelines_unchanged` in conftest.py checks after
    each test); a test that changes a pipeline takes `copy.deepcopy` of it."""
    key = (kind, tuple(sorted(kwargs.items())))
    if key not in _SHARED:
        pipe = _BUILDERS[kind](**kwargs)
        if kind == "sdxl":
            # the engine gives an SDXL pipeline its added-conditioning UNet hook once, on first
            # use, and keeps it: installed up front, so the fingerprint sees any other hook
            from sepme_engine.models.text import xl_conditioning

            xl_conditioning(pipe)
        _SHARED[key] = (pipe, fingerprint(pipe))
    TOUCHED.append(_SHARED[key][0])
    return _SHARED[key][0]


def shared_pipelines() -> list[tuple[Any, str]]:
    """Every pipeline `shared_pipeline` has built so far, with its fingerprint at build time."""
    return list(_SHARED.values())


def shared_tiny(arch: str = "sd1", seed: int = 0, max_length: int = MAX_LENGTH) -> Any:
    """`make_tiny_pipeline(arch, seed, max_length)`, built once per session (read-only)."""
    return shared_pipeline("tiny", arch=arch, seed=seed, max_length=max_length)
