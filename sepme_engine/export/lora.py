"""Export a set of increments as one kohya-format LoRA (`.safetensors`).

Keys use the diffusers module path with `_` for `.`:
`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight` [r, d_in],
`...lora_up.weight` [d_out, r] and `...alpha` (a scalar equal to r, so the LoRA scale is 1). The
loaders (A1111, ComfyUI, diffusers' `load_lora_weights`) then add up·down to the weight.
SDXL LoRAs use the LDM module path instead, as kohya's sd-scripts name SDXL networks (its SDXL
UNet is the original one): `lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k`,
`lora_unet_middle_block_1_...`, `lora_unet_output_blocks_0_1_...`. ComfyUI maps every
`model.diffusion_model.*` weight to such a name, A1111 matches them against its own (LDM) module
names, and diffusers' `load_lora_weights` converts them (`_maybe_map_sgm_blocks_to_diffusers`).

Per layer, the sum of the increments' ΔW is written:
- exactly where the factorisation allows (`rank=None`): factored increments contribute their
  coefficients to `up` and their shared basis to `down` (rank Σm); dense increments are factored
  by SVD (singular values below float32 round-off dropped);
- truncated to `rank` by SVD of the per-layer sum when its exact rank is larger.
Every layer is written with the same rank (the largest; smaller ones padded with zero
components), since diffusers mis-scales kohya LoRAs whose layers differ in rank.
Each rank-one component is balanced (‖up_i‖ = ‖down_i‖) so fp16 keeps the small β-scaled values.
The report gives the relative Frobenius error ‖ΔW − up·down‖/‖ΔW‖ measured after the cast, per
layer (max) and overall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from sepme_engine.delta.increment import Increment
from sepme_engine.errors import InvalidInput
from sepme_engine.export.modelspec import HASH_KEY, modelspec_metadata
from sepme_engine.export.report import ExportReport, Meter, parse_dtype
from sepme_engine.export.safetensors_writer import TensorEntry, constant, write_safetensors
from sepme_engine.models.arch import arch_facts
from sepme_engine.models.ldm_keys import ldm_attention_module_names

LORA_PREFIX = "lora_unet_"


def lora_key(module: str, ldm_names: Mapping[str, str] | None = None) -> str:
    """`down_blocks.0.attentions.0...attn2.to_k` -> `lora_unet_down_blocks_0_..._attn2_to_k`;
    with `ldm_names` (SDXL) the module's LDM name is used: `lora_unet_input_blocks_..._to_k`."""
    name = ldm_names[module] if ldm_names is not None else module
    return LORA_PREFIX + name.replace(".", "_")


def _balance(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank-one component so ‖up[:, i]‖ = ‖down[i, :]‖ (product unchanged)."""
    a = up.norm(dim=0)
    b = down.norm(dim=1)
    ok = (a > 0) & (b > 0)
    s = torch.where(ok, torch.sqrt(b / torch.where(ok, a, 1)), torch.ones_like(a))
    return up * s, down / s[:, None]


def _svd_factors(
    w: torch.Tensor, rank: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(up, down, singular values) of `w` (float64 SVD), truncated to `rank` or to the
    singular values above float32 round-off when `rank` is None."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    if rank is None:
        tol = (s[0] if s.numel() else 0) * max(w.shape) * torch.finfo(torch.float32).eps
        k = int((s > tol).sum())
    else:
        k = min(rank, s.numel())
    root = s[:k].sqrt()
    return (u[:, :k] * root).float(), (root[:, None] * vh[:k]).float(), s


def _lowrank_svd(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` factors of a @ b (a [d_out, M], b [M, d_in], M small) via two QRs."""
    qa, ra = torch.linalg.qr(a.double())
    qb, rb = torch.linalg.qr(b.double().T)
    u, s, vh = torch.linalg.svd(ra @ rb.T)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    return (qa @ (u[:, :k] * root)).float(), ((root[:, None] * vh[:k]) @ qb.T).float()


def _layer_factors(
    layer: str, increments: Sequence[Increment], rank: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(up, down, ΔW float32) for one layer."""
    coefs: list[torch.Tensor] = []
    bases: list[torch.Tensor] = []
    dense: list[torch.Tensor] = []
    delta: torch.Tensor | None = None
    for inc in increments:
        if layer not in inc.layer_names():
            continue
        if inc.kind == "factored":
            assert inc.basis is not None
            coefs.append(inc.coefs[layer].float())
            bases.append(inc.basis.float())
        else:
            dense.append(inc.deltas[layer].float())
        d = inc.delta(layer)
        if delta is not None and d.shape != delta.shape:
            raise InvalidInput(
                f"layer {layer}: increments disagree on the weight shape "
                f"({tuple(delta.shape)} vs {tuple(d.shape)})",
                hint="export increments of one base only",
            )
        delta = d.clone() if delta is None else delta.add_(d)
    assert delta is not None
    d_out, d_in = delta.shape
    for c, b in zip(coefs, bases, strict=True):
        if c.shape[0] != d_out or b.shape[1] != d_in:
            raise InvalidInput(f"layer {layer}: increments disagree on the weight shape")
    up_parts: list[torch.Tensor] = []
    down_parts: list[torch.Tensor] = []
    if coefs:
        up_parts.append(torch.cat(coefs, dim=1))
        down_parts.append(torch.cat(bases, dim=0))
    if dense:
        dsum = dense[0].clone()
        for d in dense[1:]:
            dsum.add_(d)
        du, dd, _ = _svd_factors(dsum, None)
        up_parts.append(du)
        down_parts.append(dd)
    up = torch.cat(up_parts, dim=1) if up_parts else delta.new_zeros(d_out, 0)
    down = torch.cat(down_parts, dim=0) if down_parts else delta.new_zeros(0, d_in)
    if rank is None and up.shape[1] > min(d_out, d_in):
        up, down, _ = _svd_factors(delta, None)  # the sum has full rank: one SVD is shorter
    if rank is not None and up.shape[1] > rank:
        if dense or up.shape[1] >= min(d_out, d_in):
            up, down, _ = _svd_factors(delta, rank)
        else:
            up, down = _lowrank_svd(up, down, rank)
    up, down = _balance(up, down)
    return up.contiguous(), down.contiguous(), delta


def kohya_metadata(arch: str, rank: int, *, output_name: str = "sepme") -> dict[str, str]:
    """The `ss_*` keys kohya's sd-scripts write for a UNet-only LoRA (alpha = rank: scale 1).

    Values are strings as kohya writes them (`str(bool)` is "True"/"False"). kohya writes
    `ss_network_args` (a JSON object of strings) only when network args were given; this LoRA
    has none, so the key is absent (readers take a missing key as no args).
    """
    facts = arch_facts(arch)
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": facts.kohya_base_version,
        "ss_v2": str(facts.family == "sd2"),
        "ss_v_parameterization": str(facts.prediction_type == "v_prediction"),
        "ss_network_train_unet_only": "True",
        "ss_output_name": output_name,
    }


def export_lora(
    increments: Mapping[str, Increment],
    out: Path,
    *,
    arch: str = "sd1",
    rank: int | None = None,
    dtype: str = "fp16",
    title: str | None = None,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    sha256: bool = True,
) -> ExportReport:
    """Write the sum of `increments` (name -> Increment, in canonical order) as one kohya LoRA
    at `out` (complete or absent).

    `rank=None` is exact (up to the cast to `dtype`); an int truncates each layer by SVD. The
    caller's `metadata` (sepme provenance) is merged over the generated modelspec/ss_* keys.
    Raises InvalidInput (no increment, rank < 1, bad dtype/arch), AlreadyExists (out exists and
    not `force`).
    """
    meter = Meter()
    facts = arch_facts(arch)
    dtype_name, tdtype = parse_dtype(dtype)
    if not increments:
        raise InvalidInput("no increment to export", hint="name at least one increment")
    if rank is not None and rank < 1:
        raise InvalidInput(
            f"rank must be at least 1, got {rank}", hint="use a rank of 4 or more", kind="rank"
        )
    names = list(increments)
    incs = [increments[n] for n in names]
    layers = sorted({layer for inc in incs for layer in inc.layer_names()})

    ups: dict[str, torch.Tensor] = {}
    downs: dict[str, torch.Tensor] = {}
    err2 = 0.0
    norm2 = 0.0
    max_rel = 0.0
    layer_ranks: dict[str, int] = {}
    for layer in layers:
        up, down, delta = _layer_factors(layer, incs, rank)
        n2 = float(delta.double().square().sum())
        if n2 == 0.0 or up.shape[1] == 0:
            continue  # nothing to add on this layer
        up_c, down_c = up.to(tdtype), down.to(tdtype)
        approx = up_c.double() @ down_c.double()
        e2 = float((delta.double() - approx).square().sum())
        err2 += e2
        norm2 += n2
        max_rel = max(max_rel, math.sqrt(e2 / n2))
        ups[layer], downs[layer] = up_c, down_c
        layer_ranks[layer] = int(up.shape[1])
    if not ups:
        raise InvalidInput(
            "the increments are all zero: nothing to export",
            kind="zero-increments",
        )
    max_rank = max(layer_ranks.values())
    # One rank for every layer: diffusers' loader mis-scales LoRAs whose layers differ in rank
    # (its alpha_pattern does not match kohya names), so pad with zero components.
    for layer, up in ups.items():
        pad = max_rank - up.shape[1]
        if pad:
            ups[layer] = torch.cat([up, up.new_zeros(up.shape[0], pad)], dim=1)
            downs[layer] = torch.cat([downs[layer], up.new_zeros(pad, downs[layer].shape[1])])

    try:
        ldm_names = ldm_attention_module_names(layers) if facts.lora_key_names == "ldm" else None
    except ValueError as exc:
        raise InvalidInput(
            f"cannot name these layers the kohya SDXL way: {exc}",
            hint="export the composition as an ldm or diffusers checkpoint instead",
            kind="lora-sdxl-names",
        ) from exc
    entries: list[TensorEntry] = []
    for layer in sorted(ups):
        key = lora_key(layer, ldm_names)
        alpha = torch.tensor(float(max_rank), dtype=tdtype)
        up_t, down_t = ups[layer], downs[layer]
        entries.append(TensorEntry(f"{key}.alpha", tdtype, (), constant(alpha)))
        entries.append(
            TensorEntry(f"{key}.lora_down.weight", tdtype, tuple(down_t.shape), constant(down_t))
        )
        entries.append(
            TensorEntry(f"{key}.lora_up.weight", tdtype, tuple(up_t.shape), constant(up_t))
        )

    meta: dict[str, str] = {}
    meta.update(
        modelspec_metadata(
            arch, title=title or "sepme: " + ", ".join(names), erased=names, lora=True
        )
    )
    meta.update(kohya_metadata(arch, max_rank, output_name=Path(out).stem))
    meta["sepme.lora_rank"] = "exact" if rank is None else str(rank)
    meta["sepme.lora_relative_error"] = f"{math.sqrt(err2 / norm2):.3e}"
    if metadata:
        meta.update(metadata)
    n_bytes = write_safetensors(
        Path(out),
        entries,
        meta,
        force=force,
        progress=progress,
        hash_key=HASH_KEY if sha256 else None,
    )
    wall, peak, rise = meter.done()
    return ExportReport(
        path=Path(out),
        format="lora",
        dtype=dtype_name,
        n_tensors=len(entries),
        bytes_written=n_bytes,
        wall_s=wall,
        peak_rss_bytes=peak,
        rss_increase_bytes=rise,
        metadata=meta,
        rank=max_rank,
        relative_error=math.sqrt(err2 / norm2),
        max_layer_relative_error=max_rel,
        layer_ranks=layer_ranks,
    )
