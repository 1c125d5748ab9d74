"""The increment format shared by every erasure method: ΔW for each cross-attention to_k/to_v.

Two kinds:

- `factored` (SepME): one basis S `[m, d_in]` shared by all layers and, per layer, a coefficient
  matrix `[d_out, m]` already multiplied by β, so ΔW_ℓ = coef_ℓ @ S.
- `dense` (ESD, FMN, UCE...): ΔW_ℓ `[d_out, d_in]` per layer.

All tensors are float32 on CPU. On disk: one safetensors file with tensor keys `basis`,
`<layer>.coef` (factored) or `<layer>.delta` (dense), and string metadata holding
`sepme.schema_version`, `sepme.format` = "increment", `sepme.kind` and every entry of `meta`
(structured values JSON-encoded by the caller). `save` writes the given path; the store does
atomic placement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from sepme_engine.errors import CorruptEntry, InvalidInput, NotFound, SchemaTooNew

SCHEMA_VERSION = 1
FORMAT = "increment"
RESERVED_META = ("sepme.schema_version", "sepme.format", "sepme.kind")

Kind = Literal["factored", "dense"]


def _check_finite(name: str, t: torch.Tensor, error: type[Exception]) -> None:
    if not bool(torch.isfinite(t).all()):
        raise error(f"tensor {name!r} of the increment holds non-finite values")


@dataclass(frozen=True)
class Increment:
    """ΔW for a set of to_k/to_v layers; see the module docstring. Build with `factored()` or
    `dense()`; use `with_meta()` to add provenance."""

    kind: Kind
    basis: torch.Tensor | None = None
    coefs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    deltas: Mapping[str, torch.Tensor] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.meta.items():
            if key in RESERVED_META:
                raise InvalidInput(f"increment metadata may not set the reserved key {key!r}")
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidInput(
                    f"increment metadata must map strings to strings; got {key!r}: {value!r}",
                    hint="JSON-encode structured values",
                )
        if self.kind == "factored":
            if self.basis is None or self.basis.dim() != 2:
                raise InvalidInput("a factored increment needs a 2-D basis [m, d]")
            if self.deltas:
                raise InvalidInput("a factored increment holds coefs, not deltas")
            m = self.basis.shape[0]
            for name, coef in self.coefs.items():
                if coef.dim() != 2 or coef.shape[1] != m:
                    raise InvalidInput(
                        f"coef of {name!r} has shape {tuple(coef.shape)}; expected [d_out, {m}]"
                    )
        elif self.kind == "dense":
            if self.basis is not None or self.coefs:
                raise InvalidInput("a dense increment holds deltas only")
            for name, delta in self.deltas.items():
                if delta.dim() != 2:
                    raise InvalidInput(f"delta of {name!r} must be 2-D [d_out, d_in]")
        else:
            raise InvalidInput(f"unknown increment kind {self.kind!r}")

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def factored(
        cls,
        basis: torch.Tensor,
        coefs: Mapping[str, torch.Tensor],
        meta: Mapping[str, str] | None = None,
    ) -> Increment:
        """ΔW_ℓ = coefs[ℓ] @ basis; coefs must already include β. Copies to float32 CPU."""
        return cls(
            kind="factored",
            basis=_f32(basis),
            coefs={k: _f32(v) for k, v in sorted(coefs.items())},
            meta=dict(meta or {}),
        )

    @classmethod
    def dense(
        cls, deltas: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None
    ) -> Increment:
        """ΔW_ℓ = deltas[ℓ]. Copies to float32 CPU."""
        return cls(
            kind="dense",
            deltas={k: _f32(v) for k, v in sorted(deltas.items())},
            meta=dict(meta or {}),
        )

    def with_meta(self, **extra: str) -> Increment:
        """A copy with `extra` merged into meta (tensors are shared, not copied)."""
        return dataclasses.replace(self, meta={**self.meta, **extra})

    # ----- queries ----------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return sorted(self.coefs if self.kind == "factored" else self.deltas)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """`{layer: (d_out, d_in)}` of each ΔW."""
        if self.kind == "factored":
            assert self.basis is not None
            d_in = int(self.basis.shape[1])
            return {k: (int(self.coefs[k].shape[0]), d_in) for k in self.layer_names()}
        return {
            k: (int(self.deltas[k].shape[0]), int(self.deltas[k].shape[1]))
            for k in self.layer_names()
        }

    def delta(self, layer: str) -> torch.Tensor:
        """Dense ΔW `[d_out, d_in]` float32 of `layer`.

        For factored increments the product is one float32 matmul: deterministic on a machine
        (so a composition and its restoration are bit-exact), but the last bit may differ between
        BLAS builds. (A float64 product was 2–3× slower and made composing ten SD-sized
        increments miss its 2 s goal; see benchmarks/results/export.md.)"""
        if self.kind == "dense":
            return self.deltas[layer]
        assert self.basis is not None
        return self.coefs[layer] @ self.basis

    def rank(self) -> int:
        """Factored: m, the number of basis rows (an upper bound on every ΔW's rank).
        Dense: the largest numerical rank among the layers' ΔW (float32 tolerance)."""
        if self.kind == "factored":
            assert self.basis is not None
            return int(self.basis.shape[0])
        eps = torch.finfo(torch.float32).eps  # the deltas are float32 values
        return max(
            (
                int(torch.linalg.matrix_rank(d.double(), rtol=max(d.shape) * eps))
                for d in self.deltas.values()
            ),
            default=0,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as stored on disk, by key."""
        if self.kind == "factored":
            assert self.basis is not None
            out = {"basis": self.basis}
            out.update({f"{k}.coef": v for k, v in self.coefs.items()})
            return out
        return {f"{k}.delta": v for k, v in self.deltas.items()}

    # ----- disk ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a safetensors file at `path` (not atomic; the store places it). The bytes depend
        only on the content: the header is rewritten with sorted keys (safetensors orders the
        metadata by a per-process hash), so the same increment made by two processes has the same
        blob digest."""
        from safetensors.torch import save

        metadata = {
            "sepme.schema_version": str(SCHEMA_VERSION),
            "sepme.format": FORMAT,
            "sepme.kind": self.kind,
            **dict(self.meta),
        }
        tensors = {
            k: v.detach().to("cpu", torch.float32).contiguous().clone()
            for k, v in self.tensors().items()
        }
        Path(path).write_bytes(canonical_safetensors(save(tensors, metadata=metadata)))

    @classmethod
    def load(cls, path: str | Path) -> Increment:
        """Read a file written by `save`. Raises NotFound, SchemaTooNew (newer schema) or
        CorruptEntry (unreadable, wrong format, inconsistent shapes, non-finite values)."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise NotFound(f"no increment file at {p}")
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises several types for bad headers
            raise CorruptEntry(
                f"cannot read increment file {p}: {exc}",
                hint="the file is damaged; re-create the increment",
            ) from exc
        version_text = metadata.get("sepme.schema_version")
        if metadata.get("sepme.format") != FORMAT or version_text is None:
            raise CorruptEntry(f"{p} is not a sepme increment file (no sepme.format/schema)")
        try:
            version = int(version_text)
        except ValueError as exc:
            raise CorruptEntry(f"{p} has an invalid schema version {version_text!r}") from exc
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{p} was written with increment schema {version}; this sepme reads up to "
                f"{SCHEMA_VERSION}",
                hint="upgrade sepme to read it",
            )
        kind = metadata.get("sepme.kind")
        meta = {k: v for k, v in metadata.items() if k not in RESERVED_META}
        for key, t in tensors.items():
            _check_finite(key, t, CorruptEntry)
        try:
            if kind == "factored":
                if "basis" not in tensors:
                    raise CorruptEntry(f"{p}: factored increment without a basis")
                coefs = {k[: -len(".coef")]: v for k, v in tensors.items() if k.endswith(".coef")}
                extra = set(tensors) - {"basis"} - {f"{k}.coef" for k in coefs}
                if extra:
                    raise CorruptEntry(f"{p}: unexpected tensors {sorted(extra)}")
                return cls(
                    kind="factored",
                    basis=tensors["basis"].float(),
                    coefs={k: coefs[k].float() for k in sorted(coefs)},
                    meta=meta,
                )
            if kind == "dense":
                deltas = {
                    k[: -len(".delta")]: v for k, v in tensors.items() if k.endswith(".delta")
                }
                if len(deltas) != len(tensors):
                    raise CorruptEntry(f"{p}: unexpected tensors in a dense increment")
                return cls(
                    kind="dense", deltas={k: deltas[k].float() for k in sorted(deltas)}, meta=meta
                )
        except InvalidInput as exc:
            raise CorruptEntry(f"{p}: {exc.message}") from exc
        raise CorruptEntry(f"{p}: unknown increment kind {kind!r}")


def _f32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    _check_finite("input", t, InvalidInput)
    return t


def canonical_safetensors(data: bytes) -> bytes:
    """`data` (a safetensors file) with its JSON header re-serialised with sorted keys, padded
    with spaces to a multiple of 8 bytes; the tensor bytes (offsets are relative to them) are
    unchanged."""
    import json
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]
