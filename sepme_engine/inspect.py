"""`sepme inspect`: increment norms, correlations between increments, and decoupling residuals.

R[i][j] = max over layers ‖ΔW_i e(c_j)ᵀ‖_F / ‖W e(c_j)ᵀ‖_F, with e(c_j) the full L×d embedding of
concept j's prompt: zero where increment i provably leaves concept j untouched (c_j ∈ E_i), so
restoring j while i stays erased is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepme_engine.bases import get_base, load_base
from sepme_engine.errors import InvalidInput
from sepme_engine.increments import get_increment, list_increments, load_increment
from sepme_engine.store import Store


@dataclass(frozen=True)
class LayerNorm:
    layer: str
    norm: float
    rel_norm: float  # ‖ΔW‖ / ‖W‖


@dataclass(frozen=True)
class IncrementStats:
    concept: str
    prompt: str
    method: str
    norm: float
    rel_norm: float
    norm_to_k: float
    norm_to_v: float
    m_k: int | None
    iterations: int
    stop_reason: str
    layers: tuple[LayerNorm, ...]


@dataclass(frozen=True)
class InspectReport:
    base: str
    concepts: tuple[str, ...]
    increments: tuple[IncrementStats, ...]
    correlation: tuple[tuple[float, ...], ...]  # cosine similarity of flattened ΔW
    residual: tuple[tuple[float, ...], ...]  # R[i][j], see module docstring

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        incs = []
        for s in self.increments:
            d = {k: v for k, v in s.__dict__.items() if k != "layers"}
            if layers:
                d["layers"] = [layer.__dict__ for layer in s.layers]
            incs.append(d)
        return {
            "base": self.base,
            "concepts": list(self.concepts),
            "increments": incs,
            "correlation": [list(r) for r in self.correlation],
            "residual": [list(r) for r in self.residual],
        }


def inspect(
    store: Store, concepts: Sequence[str] = (), *, base: str | None = None
) -> InspectReport:
    import torch

    from sepme_engine.delta.layers import cross_attention_kv
    from sepme_engine.models.text import encode_prompts

    info = get_base(store, base)
    infos = (
        [get_increment(store, info.name, c) for c in concepts]
        if concepts
        else list_increments(store, info.name)
    )
    if not infos:
        raise InvalidInput(
            f"base {info.name!r} has no increments to inspect",
            kind="no-increments",
            base=info.name,
        )
    incs = [load_increment(store, i, info) for i in infos]
    pipe = load_base(store, info.name)
    weights = {n: m.weight.detach().double() for n, m in cross_attention_kv(pipe.unet)}
    stats: list[IncrementStats] = []
    flats: list[torch.Tensor] = []
    for meta, inc in zip(infos, incs, strict=True):
        per_layer: list[LayerNorm] = []
        total = wtotal = nk = nv = 0.0
        parts = []
        for name in inc.layer_names():
            d = inc.delta(name).double()
            parts.append(d.flatten())
            n2 = float((d**2).sum())
            w2 = float((weights[name] ** 2).sum())
            total += n2
            wtotal += w2
            if name.endswith("to_k"):
                nk += n2
            else:
                nv += n2
            per_layer.append(LayerNorm(name, n2**0.5, (n2 / w2) ** 0.5 if w2 else 0.0))
        flats.append(torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64))
        stats.append(
            IncrementStats(
                meta.concept,
                meta.prompt,
                meta.method,
                total**0.5,
                (total / wtotal) ** 0.5 if wtotal else 0.0,
                nk**0.5,
                nv**0.5,
                meta.m_k,
                meta.iterations,
                meta.stop_reason,
                tuple(per_layer),
            )
        )
    n = len(incs)
    corr = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            a, b = flats[i], flats[j]
            if a.shape != b.shape:
                corr[i][j] = float("nan")
                continue
            denom = float(a.norm() * b.norm())
            corr[i][j] = float(a @ b) / denom if denom else 0.0
    emb = encode_prompts(pipe, [m.prompt for m in infos]).double()  # [n, L, d]
    resid = [[0.0] * n for _ in range(n)]
    for i, inc in enumerate(incs):
        for j in range(n):
            worst = 0.0
            for name in inc.layer_names():
                d = inc.delta(name).double()
                num = float((emb[j] @ d.T).norm())
                den = float((emb[j] @ weights[name].T).norm())
                worst = max(worst, num / den if den else 0.0)
            resid[i][j] = worst
    return InspectReport(
        info.name,
        tuple(m.concept for m in infos),
        tuple(stats),
        tuple(tuple(r) for r in corr),
        tuple(tuple(r) for r in resid),
    )


def _colour(v: float, vmax: float) -> tuple[int, int, int]:
    if v != v:  # NaN
        return (200, 200, 200)
    x = max(-1.0, min(1.0, v / vmax if vmax else 0.0))
    if x >= 0:
        return (255, int(255 * (1 - x)), int(255 * (1 - x)))
    return (int(255 * (1 + x)), int(255 * (1 + x)), 255)


def plot(report: InspectReport, path: Path) -> Path:
    """Heat maps of the correlation and residual matrices as one PNG (written atomically)."""
    from PIL import Image, ImageDraw

    from sepme_engine.store.atomic import atomic_open

    names = report.concepts
    n = len(names)
    cell, pad = 48, 8
    label_w = max(60, 7 * max(len(s) for s in names) + 10)
    panel = label_w + n * cell + pad
    img = Image.new("RGB", (2 * panel + pad, 30 + label_w + n * cell), "white")
    draw = ImageDraw.Draw(img)
    rmax = max([abs(v) for row in report.residual for v in row] + [1e-12])
    for p, (title, mat, vmax) in enumerate(
        [
            ("correlation (cosine)", report.correlation, 1.0),
            (f"decoupling residual (max {rmax:.2e})", report.residual, rmax),
        ]
    ):
        x0 = pad + p * panel
        draw.text((x0, 5), title, fill="black")
        for i, name in enumerate(names):
            draw.text((x0, 30 + label_w + i * cell + cell // 2 - 5), name[:12], fill="black")
            draw.text((x0 + label_w + i * cell + 2, 30 + label_w - 14), name[:6], fill="black")
            for j in range(n):
                v = mat[i][j]
                box = (x0 + label_w + j * cell, 30 + label_w + i * cell)
                draw.rectangle(
                    [box, (box[0] + cell - 1, box[1] + cell - 1)],
                    fill=_colour(v, vmax),
                    outline="grey",
                )
                draw.text(
                    (box[0] + 4, box[1] + cell // 2 - 5),
                    f"{v:.2f}" if vmax == 1.0 else f"{v:.0e}",
                    fill="black",
                )
    path = Path(path)
    with atomic_open(path) as fh:
        img.save(fh, format="PNG")
    return path
