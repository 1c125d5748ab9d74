"""Diffusers <-> LDM (A1111 / ComfyUI single-file) key mapping for SD 1.x and SD 2.x.

The map is the exact inverse of diffusers' own single-file converter
(`diffusers/loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`), so
`diffusers_to_ldm(...)` written to a `.safetensors` file loads back through
`StableDiffusionPipeline.from_single_file(path, config=<folder>)` with every tensor bit-identical.

It is computed from the diffusers key names alone (the UNet's layers-per-block is counted from
`down_blocks.0.resnets.N`), so it works for the real 860M UNet and for tiny test models alike, and
it can stream: `ldm_key_map` returns one `LdmEntry` per LDM tensor, and `LdmEntry.build` turns the
source tensors into the LDM tensor, so an exporter can write one tensor at a time.

Layout facts:
- UNet (`model.diffusion_model.`): `input_blocks.0.0` = conv_in; down block b, layer l ->
  `input_blocks.{1 + b*(lpb+1) + l}` (`.0` resnet, `.1` transformer), its downsampler ->
  `input_blocks.{1 + b*(lpb+1) + lpb}.0.op`; mid -> `middle_block.{0,1,2}`; up block b, layer l ->
  `output_blocks.{b*(lpb+1) + l}` (`.0` resnet, `.1` transformer, upsampler `.1.conv` or `.2.conv`).
  Transformer blocks keep their names; SD1's 1x1-conv `proj_in/proj_out` and SD2's linear ones are
  stored as they are in diffusers (the LDM models use the same shapes).
- VAE (`first_stage_model.`): `down.{i}.block.{j}`, decoder `up.{n-1-i}` (reversed), mid
  `mid.block_1/2`, `mid.attn_1.{norm,q,k,v,proj_out}` whose q/k/v/proj_out weights are 1x1 convs
  (out, in, 1, 1) in LDM and linears (out, in) in diffusers: transform "linear_to_conv".
- Text encoder, SD1 (OpenAI CLIP): `cond_stage_model.transformer.text_model.<transformers key>`.
- Text encoder, SD2 (OpenCLIP): `cond_stage_model.model.` + `token_embedding.weight`,
  `positional_embedding`, `ln_final.*`, `transformer.resblocks.N.{ln_1,ln_2,attn.out_proj,
  mlp.c_fc,mlp.c_proj}` and `attn.in_proj_weight/bias` = concat(q, k, v) on dim 0: transform
  "concat_qkv". Diffusers' SD2 CLIPTextModel has 23 layers; the LDM file of the original has 24 and a
  `text_projection`, which diffusers ignores on import. `openclip_padding` can add an inert 24th
  block and an identity projection for loaders that insist on them.
- SDXL (generative-models layout): the UNet as above (3 levels; the transformer depth per level
  only changes the `transformer_blocks.N` names, which are kept) plus `add_embedding.linear_{1,2}`
  -> `label_emb.0.{0,2}`; CLIP ViT-L (`text_encoder`) under `conditioner.embedders.0.transformer.
  text_model.`; OpenCLIP bigG (`text_encoder_2`, all 32 layers) under `conditioner.embedders.1.
  model.` in the OpenCLIP layout above, and its `text_projection` = the transpose of diffusers'
  `text_projection.weight` (transform "transpose", as diffusers' converter undoes it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
# SDXL (Stability's generative-models layout): CLIP ViT-L and OpenCLIP ViT-bigG
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

COMPONENTS = ("unet", "vae", "text_encoder")
XL_COMPONENTS = (*COMPONENTS, "text_encoder_2")

# Text-encoder layouts found in SD 1.x / 2.x single files, as (prefix in the file, family, the
# canonical prefix sepme and diffusers read). A1111 and ComfyUI rename the others the same way.
TEXT_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    (CLIP_PREFIX, "sd1", CLIP_PREFIX),
    # the original CompVis layout (transformers < 4.x CLIPTextModel without `text_model.`)
    ("cond_stage_model.transformer.", "sd1", CLIP_PREFIX),
    # Stability's generative-models (SGM) layout with one embedder, e.g. SD 2.1-Turbo
    ("conditioner.embedders.0.transformer.text_model.", "sd1", CLIP_PREFIX),
    (OPENCLIP_PREFIX, "sd2", OPENCLIP_PREFIX),
    ("conditioner.embedders.0.model.", "sd2", OPENCLIP_PREFIX),
)


def text_layout(keys: Iterable[str]) -> tuple[str, str, str] | None:
    """(prefix in the file, family "sd1" | "sd2", canonical prefix) of a single file's text
    encoder, recognised by its token embedding; None when there is none of these."""
    present = set(keys)
    for prefix, family, canonical in TEXT_LAYOUTS:
        token = "embeddings.token_embedding.weight" if family == "sd1" else "token_embedding.weight"
        if prefix + token in present:
            return prefix, family, canonical
    return None


def canonical_text_key(key: str, prefix: str, canonical: str) -> str:
    """`key` with the text-encoder `prefix` replaced by the `canonical` one (others unchanged)."""
    if prefix != canonical and key.startswith(prefix):
        return canonical + key[len(prefix) :]
    return key


TRANSFORMS = ("copy", "linear_to_conv", "concat_qkv", "transpose")

_UNET_FIXED = {
    "time_embedding.linear_1.weight": "time_embed.0.weight",
    "time_embedding.linear_1.bias": "time_embed.0.bias",
    "time_embedding.linear_2.weight": "time_embed.2.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "conv_in.weight": "input_blocks.0.0.weight",
    "conv_in.bias": "input_blocks.0.0.bias",
    "conv_norm_out.weight": "out.0.weight",
    "conv_norm_out.bias": "out.0.bias",
    "conv_out.weight": "out.2.weight",
    "conv_out.bias": "out.2.bias",
}
# SDXL's text_time addition embedding (mapped for arch sdxl only)
_UNET_XL_FIXED = {
    "add_embedding.linear_1.weight": "label_emb.0.0.weight",
    "add_embedding.linear_1.bias": "label_emb.0.0.bias",
    "add_embedding.linear_2.weight": "label_emb.0.2.weight",
    "add_embedding.linear_2.bias": "label_emb.0.2.bias",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_RESNET_INV = {v: k for k, v in _UNET_RESNET.items()}
_VAE_FIXED = {
    "encoder.conv_in.weight": "encoder.conv_in.weight",
    "encoder.conv_in.bias": "encoder.conv_in.bias",
    "encoder.conv_out.weight": "encoder.conv_out.weight",
    "encoder.conv_out.bias": "encoder.conv_out.bias",
    "encoder.conv_norm_out.weight": "encoder.norm_out.weight",
    "encoder.conv_norm_out.bias": "encoder.norm_out.bias",
    "decoder.conv_in.weight": "decoder.conv_in.weight",
    "decoder.conv_in.bias": "decoder.conv_in.bias",
    "decoder.conv_out.weight": "decoder.conv_out.weight",
    "decoder.conv_out.bias": "decoder.conv_out.bias",
    "decoder.conv_norm_out.weight": "decoder.norm_out.weight",
    "decoder.conv_norm_out.bias": "decoder.norm_out.bias",
    "quant_conv.weight": "quant_conv.weight",
    "quant_conv.bias": "quant_conv.bias",
    "post_quant_conv.weight": "post_quant_conv.weight",
    "post_quant_conv.bias": "post_quant_conv.bias",
}
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_OPENCLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


@dataclass(frozen=True)
class LdmEntry:
    """One tensor of the LDM state dict and how to build it from diffusers tensors.

    `diffusers_keys` are keys of `component`'s diffusers state dict (text-encoder keys without any
    `text_model.` prefix); `transform` is "copy" (one key), "linear_to_conv" (one (out, in)
    weight -> (out, in, 1, 1)) or "concat_qkv" (q, k, v concatenated on dim 0).
    """

    ldm_key: str
    component: str
    diffusers_keys: tuple[str, ...]
    transform: str = "copy"

    def build(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The LDM tensor from the source tensors (in `diffusers_keys` order)."""
        return apply_transform(self.transform, tensors)


def apply_transform(transform: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if transform == "copy":
        (t,) = tensors
        return t
    if transform == "linear_to_conv":
        (t,) = tensors
        return t[:, :, None, None] if t.ndim == 2 else t
    if transform == "concat_qkv":
        import torch

        return torch.cat(list(tensors), dim=0)
    if transform == "transpose":
        (t,) = tensors
        return t.T.contiguous()
    raise ValueError(f"unknown transform {transform!r}")


def text_encoder_style(arch: str) -> str:
    """The arch's text encoder kind (`ArchFacts.text_encoder`): "clip" (SD1, OpenAI CLIP
    layout), "open_clip" (SD2) or "clip+open_clip" (SDXL: both, under SDXL's prefixes)."""
    from sepme_engine.models.arch import ARCHS

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")
    return ARCHS[arch].text_encoder


def _strip_text_model(key: str) -> str:
    return key[len("text_model.") :] if key.startswith("text_model.") else key


def _layers_per_block(unet_keys: Iterable[str]) -> int:
    idx = [
        int(m.group(1))
        for k in unet_keys
        if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))
    ]
    if not idx:
        raise ValueError("UNet keys have no down_blocks.0.resnets.*: not an SD UNet")
    return max(idx) + 1


def _unet_entries(keys: list[str], xl: bool = False) -> list[LdmEntry]:
    lpb = _layers_per_block(keys)
    up_has_attn = {
        int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))
    }
    out: list[LdmEntry] = []
    unknown: list[str] = []
    for key in keys:
        ldm = _UNET_XL_FIXED.get(key) if xl else None
        ldm = ldm or _unet_key_to_ldm(key, lpb, up_has_attn)
        if ldm is None:
            unknown.append(key)
        else:
            out.append(LdmEntry(UNET_PREFIX + ldm, "unet", (key,)))
    if unknown:
        raise ValueError(f"UNet keys with no LDM equivalent: {unknown[:5]}")
    return out


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_UNET_RESNET.get(head, head)}.{tail}"


def _unet_key_to_ldm(key: str, lpb: int, up_has_attn: set[int]) -> str | None:
    if key in _UNET_FIXED:
        return _UNET_FIXED[key]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * (lpb + 1) + layer
        return (
            f"input_blocks.{i}.0.{_resnet_rest(rest)}"
            if kind == "resnets"
            else f"input_blocks.{i}.1.{rest}"
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"input_blocks.{1 + int(m[1]) * (lpb + 1) + lpb}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_rest(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * (lpb + 1) + layer
        return (
            f"output_blocks.{i}.0.{_resnet_rest(rest)}"
            if kind == "resnets"
            else f"output_blocks.{i}.1.{rest}"
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        b = int(m[1])
        slot = 2 if b in up_has_attn else 1
        return f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.conv.{m[2]}"
    return None


def ldm_unet_to_diffusers(ldm_keys: Iterable[str]) -> dict[str, str]:
    """Map LDM UNet keys (with or without `model.diffusion_model.`) to diffusers UNet keys.

    The inverse of the UNet part of `ldm_key_map`, following diffusers' converter: layers per
    block is read from the keys (first `input_blocks.N.0.op` downsampler is at N = lpb + 1).
    Used to name cross-attention layers from a checkpoint header without loading it.

    Pass every UNet key: the topology comes from the whole set (a subset such as the attn2 keys
    alone does not show where the down blocks end). Raises ValueError when it cannot be read.
    """
    ldm_keys = list(ldm_keys)
    keys = [k[len(UNET_PREFIX) :] if k.startswith(UNET_PREFIX) else k for k in ldm_keys]
    full = dict(zip(keys, ldm_keys, strict=True))
    lpb = _ldm_layers_per_block(keys)
    inv_fixed = {v: k for k, v in (_UNET_FIXED | _UNET_XL_FIXED).items()}
    out: dict[str, str] = {}
    for k in keys:
        d: str | None = None
        if k in inv_fixed:
            d = inv_fixed[k]
        elif m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.(weight|bias)", k):
            d = f"down_blocks.{(int(m[1]) - 1) // (lpb + 1)}.downsamplers.0.conv.{m[2]}"
        elif m := re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", k):
            i = int(m[1]) - 1
            b, layer = i // (lpb + 1), i % (lpb + 1)
            if m[2] == "0":
                d = f"down_blocks.{b}.resnets.{layer}.{_resnet_rest_inv(m[3])}"
            else:
                d = f"down_blocks.{b}.attentions.{layer}.{m[3]}"
        elif m := re.fullmatch(r"middle_block\.(\d)\.(.+)", k):
            j = int(m[1])
            if j % 2 == 0:
                d = f"mid_block.resnets.{j // 2}.{_resnet_rest_inv(m[2])}"
            else:
                d = f"mid_block.attentions.0.{m[2]}"
        elif m := re.fullmatch(r"output_blocks\.(\d+)\.(\d)\.(.+)", k):
            i, slot, rest = int(m[1]), m[2], m[3]
            b, layer = i // (lpb + 1), i % (lpb + 1)
            if slot == "0":
                d = f"up_blocks.{b}.resnets.{layer}.{_resnet_rest_inv(rest)}"
            elif rest.startswith("conv."):
                d = f"up_blocks.{b}.upsamplers.0.{rest}"
            else:
                d = f"up_blocks.{b}.attentions.{layer}.{rest}"
        if d is not None:
            out[full[k]] = d
    return out


def ldm_attention_module_names(modules: Iterable[str]) -> dict[str, str]:
    """LDM names (without `model.diffusion_model.`) of diffusers UNet modules inside attention
    blocks, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k` ->
    `input_blocks.4.1.transformer_blocks.0.attn2.to_k` (SDXL). Layers per block is read from the
    down blocks' attention indices (a down block has one attention per layer), so pass every
    attention module of the UNet (e.g. all its to_k/to_v). Raises ValueError otherwise.
    """
    modules = list(modules)
    idx = [
        int(m.group(1))
        for k in modules
        if (m := re.match(r"down_blocks\.\d+\.attentions\.(\d+)\.", k))
    ]
    if not idx:
        raise ValueError("no down-block attention modules: cannot tell the layers per block")
    lpb = max(idx) + 1
    out: dict[str, str] = {}
    for name in modules:
        ldm = _unet_key_to_ldm(name + ".weight", lpb, set())
        if ldm is None or not ldm.endswith(".weight"):
            raise ValueError(f"no LDM name for UNet module {name!r}")
        out[name] = ldm[: -len(".weight")]
    return out


def _ldm_layers_per_block(keys: list[str]) -> int:
    """Layers per block of an LDM UNet from its key names.

    The first downsampler sits at `input_blocks.{lpb + 1}.0.op`; without one (a single level)
    the input blocks are conv_in plus lpb resnets. Refuses a key set with neither, or one whose
    output blocks do not come in whole levels of lpb + 1.
    """
    ops = sorted(
        int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))
    )
    n_in = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    n_out = {int(m.group(1)) for k in keys if (m := re.match(r"output_blocks\.(\d+)\.", k))}
    if ops:
        lpb = ops[0] - 1
    elif n_in and 0 in n_in and len(n_in) == max(n_in) + 1:
        lpb = max(n_in)  # one level, no downsampler
    else:
        raise ValueError(
            "cannot tell the UNet's layers per block from these keys "
            "(pass every model.diffusion_model.* key, not a subset)"
        )
    if lpb < 1 or (n_out and (max(n_out) + 1) % (lpb + 1) != 0):
        raise ValueError(f"inconsistent UNet block indices (layers per block {lpb})")
    return lpb


def _resnet_rest_inv(rest: str) -> str:
    for ldm, diff in _UNET_RESNET_INV.items():
        if rest.startswith(ldm + "."):
            return diff + rest[len(ldm) :]
    return rest


def _vae_entries(keys: list[str]) -> list[LdmEntry]:
    n_up = len(
        {int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    )
    out: list[LdmEntry] = []
    unknown: list[str] = []
    for key in keys:
        transform = "copy"
        ldm: str | None = None
        if key in _VAE_FIXED:
            ldm = _VAE_FIXED[key]
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            ldm = (
                f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
            )
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            ldm = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            block = n_up - 1 - int(m[1])
            ldm = f"decoder.up.{block}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            ldm = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            ldm = (
                f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
            )
        elif m := re.fullmatch(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)",
            key,
        ):
            ldm = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                transform = "linear_to_conv"
        if ldm is None:
            unknown.append(key)
        else:
            out.append(LdmEntry(VAE_PREFIX + ldm, "vae", (key,), transform))
    if unknown:
        raise ValueError(f"VAE keys with no LDM equivalent: {unknown[:5]}")
    return out


def _text_entries(
    keys: list[str],
    style: str,
    prefix: str | None = None,
    component: str = "text_encoder",
) -> list[LdmEntry]:
    if style == "clip":
        prefix = prefix or CLIP_PREFIX
        return [LdmEntry(prefix + _strip_text_model(k), component, (k,)) for k in keys]
    prefix = prefix or OPENCLIP_PREFIX
    out: list[LdmEntry] = []
    unknown: list[str] = []
    bare = {_strip_text_model(k): k for k in keys}
    done: set[str] = set()
    for key, orig in bare.items():
        if key in done:
            continue
        if key in _OPENCLIP_FIXED:
            out.append(LdmEntry(prefix + _OPENCLIP_FIXED[key], component, (orig,)))
            continue
        if key == "text_projection.weight":  # CLIPTextModelWithProjection (SDXL's bigG)
            out.append(LdmEntry(prefix + "text_projection", component, (orig,), "transpose"))
            continue
        if key == "embeddings.position_ids":  # a buffer in older transformers; not in LDM files
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            unknown.append(orig)
            continue
        n, mod, kind = m[1], m[2], m[3]
        base = f"{prefix}transformer.resblocks.{n}."
        if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            parts = tuple(f"encoder.layers.{n}.self_attn.{p}_proj.{kind}" for p in "qkv")
            missing = [p for p in parts if p not in bare]
            if missing:
                raise ValueError(f"text encoder lacks {missing} (needed for in_proj)")
            done.update(parts)
            out.append(
                LdmEntry(
                    f"{base}attn.in_proj_{kind}",
                    component,
                    tuple(bare[p] for p in parts),
                    "concat_qkv",
                )
            )
        elif mod in _OPENCLIP_LAYER:
            out.append(LdmEntry(f"{base}{_OPENCLIP_LAYER[mod]}.{kind}", component, (orig,)))
        else:
            unknown.append(orig)
    if unknown:
        raise ValueError(f"text-encoder keys with no OpenCLIP equivalent: {unknown[:5]}")
    return out


def ldm_key_map(keys: Mapping[str, Iterable[str]], arch: str) -> list[LdmEntry]:
    """The full LDM layout of a pipeline, one entry per LDM tensor, in a stable order.

    `keys` maps "unet", "vae", "text_encoder" to that component's diffusers state-dict keys (e.g.
    `pipe.unet.state_dict().keys()`; SDXL also "text_encoder_2"); `arch` is a key of
    `models.arch.ARCHS` (its text encoder kind picks the text-encoder layout). A missing or empty component is skipped (e.g. a text-encoder-only map).
    Raises ValueError naming any key the map cannot place.
    """
    style = text_encoder_style(arch)
    unet, vae, text = (list(keys.get(c, ())) for c in COMPONENTS)
    text_2 = list(keys.get("text_encoder_2", ()))
    if style == "clip+open_clip":
        texts = (_text_entries(text, "clip", SDXL_CLIP_PREFIX) if text else []) + (
            _text_entries(text_2, "open_clip", SDXL_OPENCLIP_PREFIX, "text_encoder_2")
            if text_2
            else []
        )
    elif text_2:
        raise ValueError(f"a second text encoder is only known for sdxl, not {arch}")
    else:
        texts = _text_entries(text, style) if text else []
    entries = (
        (_unet_entries(unet, style == "clip+open_clip") if unet else [])
        + (_vae_entries(vae) if vae else [])
        + texts
    )
    seen: set[str] = set()
    for e in entries:
        if e.ldm_key in seen:
            raise ValueError(f"two tensors map to {e.ldm_key}")
        seen.add(e.ldm_key)
    return entries


def diffusers_to_ldm(
    unet_sd: Mapping[str, torch.Tensor],
    vae_sd: Mapping[str, torch.Tensor],
    text_sd: Mapping[str, torch.Tensor],
    arch: str,
    text_2_sd: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The LDM (A1111/ComfyUI) state dict of a diffusers SD pipeline's models (SDXL: four)."""
    sds = {"unet": unet_sd, "vae": vae_sd, "text_encoder": text_sd}
    if text_2_sd is not None:
        sds["text_encoder_2"] = text_2_sd
    entries = ldm_key_map({c: sd.keys() for c, sd in sds.items()}, arch)
    return {e.ldm_key: e.build([sds[e.component][k] for k in e.diffusers_keys]) for e in entries}


def pipeline_to_ldm(pipe: object, arch: str) -> dict[str, torch.Tensor]:
    """`diffusers_to_ldm` of a loaded StableDiffusionPipeline (tensors share the models' memory)."""
    text_2 = getattr(pipe, "text_encoder_2", None)
    return diffusers_to_ldm(
        pipe.unet.state_dict(),  # type: ignore[attr-defined]
        pipe.vae.state_dict(),  # type: ignore[attr-defined]
        pipe.text_encoder.state_dict(),  # type: ignore[attr-defined]
        arch,
        None if text_2 is None else text_2.state_dict(),
    )


def openclip_padding(text_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Extra OpenCLIP tensors so an SD2 file has the original's 24 blocks and `text_projection`.

    Diffusers' SD2 text encoder keeps 23 of OpenCLIP's 24 blocks (SD2 conditions on the
    penultimate layer). This returns an all-zero block N (N = number of layers; with zero weights
    the residual block is the identity) and an identity `text_projection`. Diffusers ignores exactly
    `resblocks.23` and `text_projection` on import, so only use this for real 23-layer SD2
    encoders (raises ValueError otherwise); A1111 and ComfyUI load files without it too.
    """
    import torch

    bare = {_strip_text_model(k): v for k, v in text_sd.items()}
    n = 1 + max(int(m.group(1)) for k in bare if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    if n != 23:
        raise ValueError(f"openclip_padding is for 23-layer SD2 text encoders, got {n} layers")
    ref = bare["encoder.layers.0.mlp.fc1.weight"]
    mlp, width = ref.shape
    dt = ref.dtype
    base = f"{OPENCLIP_PREFIX}transformer.resblocks.{n}."
    shapes = {
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (mlp, width),
        "mlp.c_fc.bias": (mlp,),
        "mlp.c_proj.weight": (width, mlp),
        "mlp.c_proj.bias": (width,),
    }
    out = {base + k: torch.zeros(s, dtype=dt) for k, s in shapes.items()}
    out[OPENCLIP_PREFIX + "text_projection"] = torch.eye(width, dtype=dt)
    return out


__all__ = [
    "CLIP_PREFIX",
    "OPENCLIP_PREFIX",
    "SDXL_CLIP_PREFIX",
    "SDXL_OPENCLIP_PREFIX",
    "XL_COMPONENTS",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "LdmEntry",
    "apply_transform",
    "diffusers_to_ldm",
    "ldm_key_map",
    "TEXT_LAYOUTS",
    "canonical_text_key",
    "ldm_attention_module_names",
    "ldm_unet_to_diffusers",
    "openclip_padding",
    "pipeline_to_ldm",
    "text_encoder_style",
    "text_layout",
]
