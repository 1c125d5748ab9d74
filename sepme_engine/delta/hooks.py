"""Evaluate the frozen and the tuned UNet with one UNet in memory, and apply compositions.

Two mechanisms:

- `attach(unet)` swaps every cross-attention to_k/to_v Linear for a `DeltaLinear` that shares
  the original's weight and bias (so `state_dict()` keys and values are unchanged) and adds
  `x @ ΔWᵀ` computed in float32: factored terms as `(x Sᵀ) Cᵀ` (cheap, exact for the null
  space), dense terms as `x Dᵀ`. `deltas_enabled(unet, flag)` switches the addition on/off;
  `detach(unet)` puts the original module objects back. Nothing in the base weights changes.
- `apply_deltas_inplace(unet, deltas)` writes the composition into the weights for generation:
  W ← (W_base.float() + D).to(W.dtype), restoring the saved W bit-exactly on exit. The rule and
  `sum_deltas` (which makes D) live in `delta/composition.py`.

Note: the in-place merge rounds W+D to the weight dtype, so preserved prompts are unchanged only
up to that rounding (float32: ~1e-7 relative; bf16/fp16: the rounding can swallow ΔW entirely).
The hooks keep ΔW separate and in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sepme_engine.delta.composition import compose_weight, sum_deltas
from sepme_engine.delta.increment import Increment
from sepme_engine.delta.layers import cross_attention_kv
from sepme_engine.errors import BaseMismatch

# A term is (basis [m, d_in], coef [d_out, m]) for factored, or (None, delta [d_out, d_in]).
Term = tuple[torch.Tensor | None, torch.Tensor]


class DeltaLinear(nn.Linear):
    """`base(x) + x @ ΔWᵀ` with ΔW given as a list of terms, added in float32 when enabled."""

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias  # may be None: registers a None parameter like nn.Linear
        self.__dict__["original"] = base  # not a submodule: keeps state_dict keys unchanged
        self.terms: list[Term] = []
        self.enabled = True
        # per-batch-item factor on ΔW ([B] of 0/1, see `item_mask`); None: every item gets ΔW
        self.mask: torch.Tensor | None = None

    def set_terms(self, terms: Iterable[Term]) -> None:
        """Replace the ΔW terms; tensors are moved to the weight's device as float32 (a tensor
        already there in float32 is used as is, so autograd reaches it)."""
        dev = self.weight.device
        self.terms = [
            (None if b is None else b.to(dev, torch.float32), c.to(dev, torch.float32))
            for b, c in terms
        ]
        for basis, coef in self.terms:
            expected = (
                (self.out_features, self.in_features)
                if basis is None
                else (self.out_features, basis.shape[0])
            )
            if (basis is not None and basis.shape[1] != self.in_features) or tuple(
                coef.shape
            ) != expected:
                raise BaseMismatch(
                    f"increment shape {tuple(coef.shape)} does not fit a {self.out_features}x"
                    f"{self.in_features} layer",
                    hint="the increment belongs to another base model",
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.enabled or not self.terms:
            return out
        xf = x.float()
        delta: torch.Tensor | None = None
        for basis, coef in self.terms:
            part = (xf @ basis.T) @ coef.T if basis is not None else xf @ coef.T
            delta = part if delta is None else delta + part
        assert delta is not None
        if self.mask is not None:
            if self.mask.shape[0] != x.shape[0]:
                raise ValueError(
                    f"item mask of {self.mask.shape[0]} items for a batch of {x.shape[0]}"
                )
            # a masked item gets out.float() + 0.0: exactly the frozen layer's output
            delta = delta * self.mask.view(-1, *([1] * (delta.dim() - 1)))
        return (out.float() + delta).to(out.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, terms={len(self.terms)}, enabled={self.enabled}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def attach(unet: nn.Module) -> dict[str, DeltaLinear]:
    """Wrap every to_k/to_v of `unet` in a DeltaLinear (idempotent); returns them by name."""
    wrapped: dict[str, DeltaLinear] = {}
    for name, module in cross_attention_kv(unet):
        if not isinstance(module, DeltaLinear):
            module = DeltaLinear(module)
            _set_module(unet, name, module)
        wrapped[name] = module
    return wrapped


def detach(unet: nn.Module) -> None:
    """Put the original Linear modules back (the same objects, sharing the same parameters)."""
    for name, module in cross_attention_kv(unet):
        if isinstance(module, DeltaLinear):
            original: nn.Linear = module.__dict__["original"]
            # Keep any parameter object replaced while wrapped (e.g. by a dtype conversion).
            original.weight = module.weight
            original.bias = module.bias
            _set_module(unet, name, original)


def delta_layers(unet: nn.Module) -> dict[str, DeltaLinear]:
    """The attached DeltaLinear modules by name (empty when not attached)."""
    return {n: m for n, m in cross_attention_kv(unet) if isinstance(m, DeltaLinear)}


def set_terms(unet: nn.Module, terms: Mapping[str, Sequence[Term]]) -> None:
    """Set the ΔW terms of each attached layer; layers not named get no terms."""
    layers = delta_layers(unet)
    unknown = sorted(set(terms) - set(layers))
    if unknown:
        raise BaseMismatch(
            f"the increment names layers this UNet does not have: {unknown[:3]}",
            hint="the increment belongs to another base model",
        )
    for name, layer in layers.items():
        layer.set_terms(terms.get(name, ()))


def set_increments(unet: nn.Module, increments: Sequence[Increment]) -> None:
    """Attach (if needed) and make the UNet compute θ + Σ ΔW of `increments`: factored
    increments stay factored, dense ones are added as dense terms."""
    attach(unet)
    terms: dict[str, list[Term]] = {}
    for inc in increments:
        for name in inc.layer_names():
            term: Term = (
                (inc.basis, inc.coefs[name]) if inc.kind == "factored" else (None, inc.deltas[name])
            )
            terms.setdefault(name, []).append(term)
    set_terms(unet, terms)


@contextmanager
def deltas_enabled(unet: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Temporarily switch the attached ΔW on or off (restores the previous flags)."""
    layers = delta_layers(unet)
    previous = {n: m.enabled for n, m in layers.items()}
    for m in layers.values():
        m.enabled = enabled
    try:
        yield
    finally:
        for n, m in layers.items():
            m.enabled = previous[n]


@contextmanager
def item_mask(unet: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Within the block, batch item i gets ΔW scaled by `mask[i]` (0/1, float): one UNet call
    can hold frozen (0) and tuned (1) passes. The mask must match the batch size."""
    layers = delta_layers(unet)
    m = mask.detach().float()
    for layer in layers.values():
        layer.mask = m.to(layer.weight.device)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.mask = None


@contextmanager
def attached(
    unet: nn.Module, increments: Sequence[Increment] = ()
) -> Iterator[dict[str, DeltaLinear]]:
    """`attach` + `set_increments` for the duration of the block, then `detach`."""
    layers = attach(unet)
    try:
        set_increments(unet, increments)
        yield layers
    finally:
        detach(unet)


@contextmanager
def apply_deltas_inplace(unet: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """W ← compose_weight(W, D, W.dtype) for each named layer (the composition rule,
    `delta/composition.py`); restored bit-exactly on exit."""
    layers = dict(cross_attention_kv(unet))
    unknown = sorted(set(deltas) - set(layers))
    if unknown:
        raise BaseMismatch(
            f"the composition names layers this UNet does not have: {unknown[:3]}",
            hint="the increments belong to another base model",
        )
    for name, d in deltas.items():
        if tuple(d.shape) != tuple(layers[name].weight.shape):
            raise BaseMismatch(
                f"ΔW of {name} has shape {tuple(d.shape)}, the layer {tuple(layers[name].weight.shape)}",
                hint="the increments belong to another base model",
            )
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, d in deltas.items():
                w = layers[name].weight
                saved[name] = w.detach().clone()
                w.copy_(compose_weight(w, d, w.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                layers[name].weight.copy_(original)


__all__ = [
    "DeltaLinear",
    "Term",
    "apply_deltas_inplace",
    "attach",
    "attached",
    "delta_layers",
    "deltas_enabled",
    "detach",
    "item_mask",
    "set_increments",
    "set_terms",
    "sum_deltas",  # from delta/composition.py, where the rule lives; kept here for old imports
]
