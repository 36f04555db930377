"""Peak memory of this process on a device, for the training log lines ("Peak mem 1.234 GB")."""
from __future__ import annotations

import sys

import torch


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by torch; MPS: memory the driver holds now; CPU: peak resident set
    size of the process (everything it ever held at once, weights included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def peak_memory_gb(device: torch.device) -> float:
    return peak_memory_bytes(device) / 1e9
