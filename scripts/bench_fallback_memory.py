#!/usr/bin/env python3
"""Peak memory of the device fallbacks (the kernels MPS/CUDA/XPU run), measured on the CPU.

    python scripts/bench_fallback_memory.py [--output benchmarks/fallback_memory_cpu.md]

Attention forward + backward (one sequence, 8 query / 2 KV heads of 64, causal, fp32) through
the CPU's native kernel, PyTorch's F.scaled_dot_product_attention, the fallback
(ops.device_fallbacks()), and at T = 4096 the pure-PyTorch reference (the full [T, T] scores);
linear_cross_entropy forward + backward through the fallback against the size of the logits.
Peaks are torch's allocations beyond the inputs (profiler events: other processes change nothing).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_common import environment, write_report  # noqa: E402

from kr_mini_llm import ops  # noqa: E402
from kr_mini_llm.device import allocated_peak_bytes  # noqa: E402

MiB = 2 ** 20


def attention_rows(T):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, T, 8, 64, generator=g, requires_grad=True)
    k = torch.randn(1, T, 2, 64, generator=g, requires_grad=True)
    v = torch.randn(1, T, 2, 64, generator=g, requires_grad=True)
    go = torch.randn(1, T, 8, 64, generator=g)

    def sdpa():
        F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       enable_gqa=True).transpose(1, 2).backward(go)

    runs = {"SDPA": sdpa, "native CPU kernel": lambda: ops.attention(q, k, v).backward(go)}
    if T <= 4096:
        runs["reference (full scores)"] = lambda: ops.attention_reference(q, k, v).backward(go)
    peaks = {name: allocated_peak_bytes(fn) for name, fn in runs.items()}
    with ops.device_fallbacks():
        peaks["fallback (sdpa path)"] = allocated_peak_bytes(lambda: ops.attention(q, k, v).backward(go))
    return [f"| attention f+b, T = {T} | {name} | {p / MiB:,.1f} | {p / peaks['SDPA']:.2f} |"
            for name, p in peaks.items()]


def lce_rows(N, C, V):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, C, generator=g, requires_grad=True)
    w = torch.randn(V, C, generator=g, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    with ops.device_fallbacks():
        peak = allocated_peak_bytes(lambda: ops.linear_cross_entropy(h, w, t).backward())
    logits = N * V * 4
    return [f"| linear_cross_entropy f+b, N = {N}, C = {C}, V = {V} | fallback (chunked) | {peak / MiB:,.1f} | "
            f"{peak / logits:.2f} of the fp32 logits ({logits / MiB:,.0f} MiB) |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="benchmarks/fallback_memory_cpu.md")
    a = ap.parse_args(argv)
    start = time.time()
    lines = ["# Device fallbacks: peak memory on the CPU", "",
             f"Command: `python scripts/bench_fallback_memory.py --output {a.output}`", "", *environment(), "",
             "| what | path | peak MiB beyond inputs | / SDPA's |", "|---|---|---:|---:|"]
    for rows in (attention_rows(4096), attention_rows(8192), lce_rows(4096, 256, 32000)):
        for row in rows:
            print(row, flush=True)
            lines.append(row)
    lines += ["", "The fallback is what MPS, CUDA and XPU run (no native kernel there); on the CPU it runs "
              "through ops.device_fallbacks(). Times are not reported: the cores were shared."]
    write_report(a.output, lines, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
