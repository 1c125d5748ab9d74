"""Tiny, seeded Stable Diffusion-architecture pipelines built offline (diffusers' get_dummy_components style).

`arch` is "sd1" (CLIP text encoder, eos padding, epsilon), "sd2" (OpenCLIP-style: `!` padding,
linear projections in the transformer blocks, epsilon) or "sd2-v" (as sd2 with v-prediction).

`make_tiny_pipeline` is the smallest model (2 levels, 1 layer per block); `make_real_topology_pipeline`
has the real SD 1.x / 2.x topology (the shipped configs: 4 levels, 2 layers per block, attention in
the first three levels, so the real LDM block indices input_blocks.1,2,4,5,7,8 / output_blocks.3-11)
at reduced width.
"""

from __future__ import annotations

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


def make_real_topology_pipeline(
    arch: str = "sd1", seed: int = 0, max_length: int = MAX_LENGTH, text_layers: int = 2
) -> Any:
    """The shipped SD 1.5 / 2.1-base / 2.1 (768-v) configs with every width reduced.

    Topology (block types, layers per block, attention levels, linear vs conv projections,
    VAE levels) is read from `sepme_engine/models/shipped`, only channel counts, heads and the
    text encoder's size are changed, so LDM key names are those of the real checkpoints.
    """
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sepme_engine.models.configs import shipped_configs
    from sepme_engine.models.tokenizer import clip_tokenizer

    cfgs = shipped_configs(arch)
    unet_cfg = {k: v for k, v in cfgs["unet"].items() if not k.startswith("_")}
    sd2 = arch.startswith("sd2")
    unet_cfg.update(
        block_out_channels=REAL_UNET_WIDTHS,
        norm_num_groups=REAL_GROUPS,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=[2, 2, 4, 4] if sd2 else 2,
        sample_size=8,
    )
    vae_cfg = {k: v for k, v in cfgs["vae"].items() if not k.startswith("_")}
    vae_cfg.update(block_out_channels=REAL_VAE_WIDTHS, norm_num_groups=REAL_GROUPS, sample_size=64)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_cfg)
    torch.manual_seed(seed + 2)
    text_cfg = {k: v for k, v in cfgs["text_encoder"].items() if k not in ("architectures",)}
    text_cfg.update(
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=text_layers,
        projection_dim=TEXT_WIDTH,
        max_position_embeddings=max_length,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()
    clip = cfgs["tokenizer"]["clip"]
    tokenizer = clip_tokenizer(pad_token=clip["pad_token"], max_length=max_length)
    sched_cfg = cfgs["scheduler"]
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
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
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sepme_engine.models.configs import shipped_configs
    from sepme_engine.models.tokenizer import clip_tokenizer

    cfgs = shipped_configs("sdxl")
    w1, w2 = XL_TEXT_WIDTHS
    unet_cfg = {k: v for k, v in cfgs["unet"].items() if not k.startswith("_")}
    unet_cfg.update(
        block_out_channels=XL_UNET_WIDTHS,
        norm_num_groups=REAL_GROUPS,
        cross_attention_dim=w1 + w2,
        attention_head_dim=[2, 2, 4],
        transformer_layers_per_block=[1, 1, 2],
        addition_time_embed_dim=XL_TIME_DIM,
        projection_class_embeddings_input_dim=6 * XL_TIME_DIM + w2,
        sample_size=8,
    )
    vae_cfg = {k: v for k, v in cfgs["vae"].items() if not k.startswith("_")}
    vae_cfg.update(block_out_channels=REAL_VAE_WIDTHS, norm_num_groups=REAL_GROUPS, sample_size=64)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_cfg)
    encoders = []
    for i, (name, cls, width) in enumerate(
        (("text_encoder", CLIPTextModel, w1), ("text_encoder_2", CLIPTextModelWithProjection, w2))
    ):
        torch.manual_seed(seed + 2 + i)
        text_cfg = {
            k: v for k, v in cfgs[name].items() if k not in ("architectures", "torch_dtype")
        }
        text_cfg.update(
            hidden_size=width,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=3,
            projection_dim=width,
            max_position_embeddings=max_length,
        )
        encoders.append(cls(CLIPTextConfig(**text_cfg)).eval())
    tokenizers = [
        clip_tokenizer(pad_token=cfgs[t]["clip"]["pad_token"], max_length=max_length)
        for t in ("tokenizer", "tokenizer_2")
    ]
    sched_cfg = cfgs["scheduler"]
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    pipe = StableDiffusionXLPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
