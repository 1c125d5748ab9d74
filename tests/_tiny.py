"""Tiny, seeded Stable Diffusion-architecture pipelines built offline (diffusers' get_dummy_components style).

`arch` is "sd1" (CLIP text encoder, eos padding, epsilon), "sd2" (OpenCLIP-style: `!` padding,
linear projections in the transformer blocks, epsilon) or "sd2-v" (as sd2 with v-prediction).
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
