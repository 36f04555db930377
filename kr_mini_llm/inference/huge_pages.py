"""Inference weights in 2 MiB pages, where the OS grants them.

A decode step streams every weight once, a few bytes per weight, so with 4 KiB pages the CPU walks
the page tables once per 4 KiB of weights: model_small's int4 weights are 13,000 pages, far past
any TLB. Linux hands out transparent huge pages on request (`madvise(MADV_HUGEPAGE)`, which
distributions that set THP to "madvise" require): the weights are copied into one anonymous mapping
that asked for them before it was touched (what that gained: docs/generation.md). Where the OS has
no such call (macOS, Windows), THP is off, or the request fails, the weights stay where they are.
While the copies are made the originals still exist: loading takes the weights' size twice, briefly.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Sequence

import torch

HUGE_PAGE = 2 << 20
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_ALIGN = 64  # each tensor starts on a cache line of its own


def on_huge_pages(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None] | None:
    """Copies of `tensors` (dense CPU tensors; None entries stay None, a tensor listed twice gets one
    copy) laid out in one anonymous mapping that asked for huge pages, or None where this OS cannot
    ask (or THP is "never", or the mapping or the request fails). The originals are not changed; the
    mapping lives as long as any copy does."""
    unique = list({id(t): t for t in tensors if t is not None}.values())
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in unique):
        raise ValueError("on_huge_pages takes dense CPU tensors")
    if not hasattr(mmap, "MADV_HUGEPAGE") or "[never]" in _read(THP_SETTING):
        return None
    sizes = [_padded(t.nbytes) for t in unique]
    # private: a shared anonymous mapping is shmem, which THP's "madvise" setting does not cover
    try:
        pages = mmap.mmap(-1, sum(sizes) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        pages.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: its faults then take 2 MiB pages
    except OSError:  # no room for the mapping, or a kernel without THP (EINVAL): ordinary pages then
        return None
    buf = torch.frombuffer(pages, dtype=torch.uint8)  # holds a reference to the mapping
    offset = -buf.data_ptr() % HUGE_PAGE  # huge pages cover 2 MiB-aligned addresses only
    copies = {}
    for t, size in zip(unique, sizes):
        copies[id(t)] = buf[offset:offset + t.nbytes].view(t.dtype).view(t.shape).copy_(t)
        offset += size
    return [None if t is None else copies[id(t)] for t in tensors]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _padded(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
