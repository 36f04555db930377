#!/usr/bin/env python3
"""fp32 GEMMs of the model's linear layers: torch's default (MKL sgemm on x86 wheels) against
oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise), the three GEMMs of a training step
(forward y = x W^T, dx = dy W, dW = dy^T x), contenders interleaved call by call.

    python scripts/bench_linear.py                    # -> benchmarks/linear_cpu.md
    python scripts/bench_linear.py --isa avx2 --output benchmarks/linear_cpu_avx2.md

Decides whether routing the model's fp32 linear layers through oneDNN would pay on this CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_isa_argument, enter_isa, environment, interleaved_medians, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (in, out) of model_small's and model_tiny's linear layers (q/o, k/v, gate/up, down), 4096 tokens.
SHAPES = {"small": [(768, 768), (768, 256), (768, 2048), (2048, 768)],
          "tiny": [(256, 256), (256, 64), (256, 688), (688, 256)]}


def onednn(a, b_t):
    """a @ b_t^T through oneDNN's fp32 matmul."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "linear_cpu.md")
    add_isa_argument(p)
    args = p.parse_args()
    enter_isa(args.isa)
    torch.set_num_threads(args.threads)
    start = time.time()
    lines = ["# fp32 linear layers: MKL (torch default) against oneDNN", "",
             "Command: `python " + " ".join(["scripts/bench_linear.py", *sys.argv[1:]]) + "`", "",
             *environment(), f"- Threads: {args.threads}, {args.tokens} tokens", "",
             "GFLOP/s of each GEMM (median, the two libraries taking turns); ratio = oneDNN / MKL (> 1: oneDNN faster).",
             "", "| model | in -> out | GEMM | MKL GFLOP/s | oneDNN GFLOP/s | oneDNN / MKL |", "|---|---|---|---|---|---|"]
    n = args.tokens
    for model, shapes in SHAPES.items():
        for cin, cout in shapes:
            x, w, dy = torch.randn(n, cin), torch.randn(cout, cin), torch.randn(n, cout)
            gemms = {"fwd x W^T": ({"mkl": lambda: x @ w.t(), "onednn": lambda: onednn(x, w)}, n * cin * cout),
                     "dx = dy W": ({"mkl": lambda: dy @ w, "onednn": lambda: onednn(dy, w.t())}, n * cin * cout),
                     "dW = dy^T x": ({"mkl": lambda: dy.t() @ x, "onednn": lambda: onednn(dy.t(), x.t())}, n * cin * cout)}
            for name, (fns, macs) in gemms.items():
                t = interleaved_medians(fns, args.repeats)
                gm, go = 2 * macs / t["mkl"] / 1e9, 2 * macs / t["onednn"] / 1e9
                row = f"| {model} | {cin} -> {cout} | {name} | {gm:.0f} | {go:.0f} | {go / gm:.2f}x |"
                lines.append(row)
                print(row, flush=True)
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
