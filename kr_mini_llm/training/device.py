"""Device choice (cuda -> mps -> cpu) and the mixed-precision dtype that suits it."""
from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{requested}' was asked for but CUDA is not available here; "
                           "use device: auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{requested}' was asked for but MPS is not available here "
                           "(needs Apple Silicon and a torch built with MPS); use device: auto or cpu")
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """bf16 on CPU and CUDA (when supported), fp16 on MPS, unless asked otherwise."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def apply_memory_limit(device: torch.device, fraction: float) -> None:
    if device.type == "mps":
        torch.mps.set_per_process_memory_fraction(fraction)
