"""Host memory for CPU training: glibc's malloc told to keep what a training step frees.

Every training step allocates and frees the same large tensors (activations, gradients, the
bf16 copies autocast makes, the LM head's logits chunk). glibc's malloc serves a block above
its mmap threshold (128 KiB at start, raised only as large blocks are freed) by a fresh mmap,
and hands the heap's free top back to the kernel past its trim threshold, so the next step
faults the same memory in again, a zeroed 4 KiB page at a time. Raising both thresholds keeps
that memory in the process for the next step. Measured on a 2-core Zen 4 (docs/performance.md):
model_tiny's bf16 step 2-4% faster in train.py at the demo's batch 16 and 4-19% at batch 4;
its fp32 step no faster at batch 16 and slower at batch 4 in four of five comparisons (by
6-16%), so the Trainer does it for bf16 steps only (for_training). The cost: the process keeps
its peak heap resident for the rest of its life (a notebook that trained too).

KR_MINI_LLM_MALLOC=system leaves glibc's settings as they are.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

ENV = "KR_MINI_LLM_MALLOC"
# mallopt parameters (malloc.h) and values: blocks up to glibc's largest mmap threshold
# (32 MiB on 64-bit) come from the heap; free heap memory is kept up to mallopt's int limit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2**31 - 1


def for_training(device, amp_dtype) -> bool:
    """The Trainer's rule: freed memory kept for bf16 steps on the CPU (keep_freed_memory), where
    it measured faster; True where it is kept."""
    import torch

    return device.type == "cpu" and amp_dtype == torch.bfloat16 and keep_freed_memory()


def describe() -> str:
    """What this process runs with, for benchmark reports."""
    if keep_freed_memory.cache_info().currsize and keep_freed_memory():
        return f"glibc malloc keeps freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, no trimming; {ENV})"
    return "the system's malloc settings"


@functools.cache
def keep_freed_memory() -> bool:
    """Sets glibc's thresholds once per process; True where they were set (Linux with glibc as the
    malloc in use and KR_MINI_LLM_MALLOC not 'system'), False elsewhere (macOS, musl, Windows, a
    preloaded allocator: nothing changes)."""
    choice = os.environ.get(ENV, "keep")
    if choice not in ("keep", "system"):
        raise ValueError(f"{ENV}={choice!r}: expected 'keep' (the default: freed memory stays in the process "
                         "for the next step) or 'system' (glibc's own malloc settings)")
    if choice == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        process, glibc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
        glibc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = glibc.mallopt
    except (OSError, AttributeError):
        return False
    # With tcmalloc or jemalloc preloaded (LD_PRELOAD), glibc's malloc is not the one in use.
    if ctypes.cast(process.malloc, ctypes.c_void_p).value != ctypes.cast(glibc.malloc, ctypes.c_void_p).value:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
