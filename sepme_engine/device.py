"""Device and dtype choice: `auto` = cuda, then mps, then cpu; frozen weights bf16 on GPU."""

from __future__ import annotations

from typing import Any

from sepme_engine.errors import DeviceUnavailable, InvalidInput

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def resolve_device(name: str = "auto") -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "CUDA is not available on this machine", hint="use --device cpu (or auto)"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise DeviceUnavailable(
            "MPS is not available on this machine", hint="use --device cpu (or auto)"
        )
    if not (name == "cpu" or name == "mps" or name.startswith("cuda")):
        raise InvalidInput(f"unknown device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def resolve_dtype(name: str, device: Any) -> str:
    """The frozen weights' dtype name ("float32" | "float16" | "bfloat16") for `device`."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPE_NAMES:
        raise InvalidInput(f"unknown dtype {name!r}", hint="use auto, fp32, fp16 or bf16")
    if device.type == "cpu" and name != "fp32":
        raise InvalidInput(
            f"{name} weights are for GPUs; on the CPU use fp32",
            hint="drop --dtype or pass --dtype fp32",
        )
    return DTYPE_NAMES[name]
