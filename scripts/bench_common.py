"""Timing, memory and environment helpers shared by the benchmark scripts."""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time

import torch


def median_time(fn, repeats: int = 7, warmup: int = 2, budget_s: float = 20.0) -> float:
    """Median wall time of fn() in seconds; fewer repeats (at least 3) when one call is slow."""
    for _ in range(warmup):
        fn()
    times = []
    for i in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i >= 2 and sum(times) > budget_s:
            break
    return statistics.median(times)


def peak_memory(fn) -> int:
    """Peak bytes allocated by torch on the CPU while fn() runs (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def ratio(baseline, ours) -> str:
    return "–" if baseline is None else f"{baseline / ours:.2f}x"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> list[str]:
    from kr_mini_llm import ops

    return [
        f"- Machine: {cpu_name()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}",
        f"- torch {torch.__version__}, kr_mini_llm kernels built for {ops.simd_capability()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def write_report(path, lines: list[str], start: float) -> None:
    """Writes the markdown report with the total time; creates the folder."""
    from pathlib import Path

    lines = lines + [f"\nTotal benchmark time: {time.time() - start:.0f} s"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
