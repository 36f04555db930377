#!/usr/bin/env python3
"""Benchmarks every fused op against its baselines, measured in the same process.

    python scripts/bench_ops.py                      # full run -> benchmarks/ops_cpu.md
    python scripts/bench_ops.py --ops attention --threads 2 --dtypes bfloat16
    python scripts/bench_ops.py --quick --no-compile --output /tmp/ops.md   # smoke run
    python scripts/bench_ops.py --isa avx2 --output benchmarks/ops_cpu_avx2.md   # an AVX2-only CPU

Baselines: the eager pure-PyTorch reference, torch.compile of that reference, and for the
attention ops F.scaled_dot_product_attention (PyTorch's CPU flash kernel, enable_gqa=True); for
dropout, PyTorch's F.dropout, eager and compiled (the reference hashes the same mask in integer ops:
an oracle, not what a user would run).
Times are medians of repeated runs, the contenders taking turns; ratios are baseline time / our time (> 1: we are faster).
Peak memory is measured with the profiler's allocation events (all CPU allocations by torch).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (add_isa_argument, enter_isa, environment, interleaved_medians, mfu,  # noqa: E402
                          peak_memory, ratio, write_report)

from kr_mini_llm import ops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# Each case: name, shape text, a builder of inputs (dtype) -> tuple, and variants
# {label: fn(*inputs)} whose output is a tensor (or tuple; the first is used for backward).

def rms_norm_cases(quick):
    shapes = [(4096, 768), (8192, 1024)] if not quick else [(256, 96)]
    for n, c in shapes:
        def make(dtype, n=n, c=c):
            return (torch.randn(n, c, dtype=dtype), torch.ones(c, dtype=dtype))
        yield f"x [{n}, {c}]", make, {"ours": ops.rms_norm, "reference": ops.rms_norm_reference}


def swiglu_cases(quick):
    shapes = [(4096, 2048), (8192, 2816)] if not quick else [(128, 200)]
    for n, c in shapes:
        def make(dtype, n=n, c=c):
            return (torch.randn(n, c, dtype=dtype), torch.randn(n, c, dtype=dtype))
        yield f"gate/up [{n}, {c}]", make, {"ours": ops.swiglu, "reference": ops.swiglu_reference}


def dropout_cases(quick):
    # the residual stream of model_tiny's demo batch and of model_small at 8 x 1024 tokens; the
    # baseline is PyTorch's own dropout (its "reference" here), eager and compiled
    shapes = [(16 * 256, 256), (8 * 1024, 768)] if not quick else [(64, 96)]
    for n, c in shapes:
        def make(dtype, n=n, c=c):
            return (torch.randn(n, c, dtype=dtype),)
        yield f"x [{n}, {c}], p 0.1", make, {"ours": lambda x: ops.dropout(x, 0.1),
                                             "reference": lambda x: F.dropout(x, 0.1, True)}


def rotary_cases(quick):
    shapes = [(4, 1024, 12, 64), (4, 2048, 16, 64)] if not quick else [(2, 16, 3, 32)]
    for b, t, h, d in shapes:
        def make(dtype, b=b, t=t, h=h, d=d):
            cos, sin = ops.rope_tables(d, t, 10000.0)
            return (torch.randn(b, t, h, d, dtype=dtype), cos, sin)
        yield f"x [{b}, {t}, {h}, {d}]", make, {"ours": ops.rotary, "reference": ops.rotary_reference}


def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)
    return out.transpose(1, 2)


def attention_cases(quick, tiny=False):
    shapes = [(4, 512, 12, 4, 64), (2, 1024, 12, 4, 64), (1, 2048, 16, 4, 64)]
    if tiny:  # model_tiny's attention at its training length
        shapes = [(16, 256, 8, 2, 32)]
    if quick:
        shapes = [(1, 64, 4, 2, 32)]
    for b, t, hq, hkv, d in shapes:
        def make(dtype, b=b, t=t, hq=hq, hkv=hkv, d=d):
            return (torch.randn(b, t, hq, d, dtype=dtype), torch.randn(b, t, hkv, d, dtype=dtype),
                    torch.randn(b, t, hkv, d, dtype=dtype))
        yield (f"q [{b}, {t}, {hq}, {d}], kv heads {hkv}", make,
               {"ours": ops.attention, "reference": ops.attention_reference, "sdpa": _sdpa})


def decode_cases(quick):
    shapes = [(1, 1024, 1, 12, 4, 64), (4, 2048, 1, 16, 4, 64), (4, 1024, 4, 12, 4, 64)]
    if quick:
        shapes = [(2, 40, 1, 4, 2, 32)]
    for b, L, s, hq, hkv, d in shapes:
        def make(dtype, b=b, L=L, s=s, hq=hq, hkv=hkv, d=d):
            q = torch.randn(b, s, hq, d, dtype=dtype)
            kc = torch.randn(b, L, hkv, d, dtype=dtype)
            vc = torch.randn(b, L, hkv, d, dtype=dtype)
            return (q, kc, vc, torch.full((b,), L, dtype=torch.int64))

        def sdpa(q, kc, vc, lens, s=s, L=L):
            # All sequences full: one SDPA call over the valid cache, queries at the end.
            mask = None
            if s > 1:
                pos_q = torch.arange(L - s, L).unsqueeze(1)
                mask = torch.arange(L).unsqueeze(0) <= pos_q
            out = F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2),
                                                 attn_mask=mask, enable_gqa=True)
            return out.transpose(1, 2)
        yield (f"q [{b}, {s}, {hq}, {d}], cache {L} x {hkv} heads", make,
               {"ours": ops.decode_attention, "reference": ops.decode_attention_reference, "sdpa": sdpa})


def decode_step_cases(quick):
    # A block of model_small (12 heads, 4 KV heads, qk-norm as Qwen3) at a 1,024-token cache.
    shapes = [(1, 1024, 1, 12, 4, 64), (8, 1024, 1, 12, 4, 64)]
    if quick:
        shapes = [(2, 40, 1, 4, 2, 32)]
    for b, L, s, hq, hkv, d in shapes:
        def make(dtype, b=b, L=L, s=s, hq=hq, hkv=hkv, d=d):
            cos, sin = ops.rope_tables(d, L + s, 10000.0, None)
            pos = torch.full((b, s), L - s) + torch.arange(s)
            return (torch.randn(b, s, (hq + 2 * hkv) * d, dtype=dtype), torch.ones(d, dtype=dtype),
                    torch.ones(d, dtype=dtype), 1e-6, cos[pos].to(dtype), sin[pos].to(dtype),
                    torch.randn(b, L, hkv, d, dtype=dtype), torch.randn(b, L, hkv, d, dtype=dtype),
                    torch.full((b,), L - s, dtype=torch.int64), hq)

        yield (f"qkv [{b}, {s}, {(hq + 2 * hkv) * d}], cache {L} x {hkv} heads, qk-norm", make,
               {"ours": ops.decode_attention_step, "reference": ops.decode_attention_step_reference})


def lce_cases(quick, tiny=False):
    shapes = [(8192, 768, 32000), (4096, 1024, 32000)] if not quick else [(64, 48, 301)]
    if tiny and not quick:  # model_tiny's LM head and loss on a 4,096-token step
        shapes = [(4096, 256, 8000)]
    for n, c, v in shapes:
        def make(dtype, n=n, c=c, v=v):
            return (torch.randn(n, c, dtype=dtype), 0.02 * torch.randn(v, c, dtype=dtype),
                    torch.randint(0, v, (n,)))
        yield (f"hidden [{n}, {c}], vocab {v}", make,
               {"ours": ops.linear_cross_entropy, "reference": ops.linear_cross_entropy_reference})


def decode_linear_cases(quick):
    # model_small's decode step: q/k/v stacked, gate/up (SwiGLU epilogue), down, the LM head; 1 and 8 rows.
    shapes = [(1, 1280, 768), (8, 1280, 768), (1, 4096, 768), (1, 768, 2048), (1, 32000, 768), (8, 32000, 768)]
    if quick:
        shapes = [(3, 37, 64)]
    for n, m, k in shapes:
        for wfmt in ("same", "int8"):
            def make(dtype, n=n, m=m, k=k, wfmt=wfmt):
                w = torch.randn(m, k)
                w, s = ops.quantize_int8(w) if wfmt == "int8" else (w.to(dtype), None)
                return (torch.randn(n, k, dtype=dtype), w, s)
            label = "weight as x" if wfmt == "same" else "weight int8 per channel"
            yield (f"x [{n}, {k}] @ [{m}, {k}]^T, {label}", make,
                   {"ours": ops.decode_linear, "reference": ops.decode_linear_reference})


def attention_flops(q, k, v):
    """Forward FLOPs of causal attention: QK^T and PV over seq / 2 keys on average."""
    b, t, hq, d = q.shape
    return 2 * 2 * b * hq * t * (t / 2) * d


def lce_flops(h, w, targets):
    return 2 * h.shape[0] * h.shape[1] * w.shape[0]


def gemm_dtype(name, inputs):
    """The dtype an op's GEMMs run in: linear_cross_entropy multiplies bf16 in fp32 on a CPU whose
    bf16 GEMMs do not pay (ops.linear_cross_entropy.gemm_dtype); the others in their inputs' dtype."""
    if name == "linear_cross_entropy":
        return importlib.import_module("kr_mini_llm.ops.linear_cross_entropy").gemm_dtype(inputs[0])
    return inputs[0].dtype


# Model FLOPs of a forward (fwd+bwd: 3x) for the GEMM-bound ops; their rows report MFU.
FLOPS = {"attention": attention_flops, "linear_cross_entropy": lce_flops}

OPS = {"rms_norm": rms_norm_cases, "rotary": rotary_cases, "swiglu": swiglu_cases, "dropout": dropout_cases,
       "attention": attention_cases, "decode_attention": decode_cases, "decode_attention_step": decode_step_cases,
       "linear_cross_entropy": lce_cases, "decode_linear": decode_linear_cases}
INFERENCE_ONLY = {"decode_attention", "decode_attention_step", "decode_linear"}


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# Inputs that get gradients, by op (tables, targets and caches do not).
GRAD_INPUTS = {"rms_norm": (0, 1), "rotary": (0,), "swiglu": (0, 1), "dropout": (0,), "attention": (0, 1, 2),
               "linear_cross_entropy": (0, 1)}


def fwd_bwd(fn, inputs, grad_inputs):
    leaves = [t.detach().requires_grad_(True) if i in grad_inputs else t for i, t in enumerate(inputs)]
    out = first(fn(*leaves))
    out.backward(torch.ones_like(out) if out.dim() else None)


def run_op(name, args, lines):
    lines.append(f"\n## {name}\n")
    header = ("| shape | dtype | threads | pass | ours ms | " +
              " | ".join(f"{b} ms" for b in ("eager", "compile", "sdpa")) +
              " | eager / ours | compile / ours | sdpa / ours | ours MFU |")
    lines.append(header)
    lines.append("|" + "---|" * 12)
    cases = OPS[name](args.quick, args.tiny) if name in ("attention", "linear_cross_entropy") else OPS[name](args.quick)
    for shape, make, variants in cases:
        for dtype in args.dtypes:
            base = make(dtype)
            fns = {"ours": variants["ours"], "eager": variants["reference"]}
            if not args.no_compile:
                torch._dynamo.reset()  # a fresh cache per case: never fall back to eager on a recompile limit
                fns["compile"] = torch.compile(variants["reference"], dynamic=False)
            if "sdpa" in variants:
                fns["sdpa"] = variants["sdpa"]
            passes = ["fwd"] if name in INFERENCE_ONLY else ["fwd", "fwd+bwd"]
            for threads in args.threads:
                torch.set_num_threads(threads)
                for p in passes:
                    if p == "fwd":
                        calls = {k: (lambda fn=fn: _no_grad(fn, base)) for k, fn in fns.items()}
                    else:
                        calls = {k: (lambda fn=fn: fwd_bwd(fn, base, GRAD_INPUTS[name])) for k, fn in fns.items()}
                    times = interleaved_medians(calls, args.repeats)
                    cells = [f"{times[k] * 1e3:.2f}" if k in times else "–" for k in ("ours", "eager", "compile", "sdpa")]
                    rs = [ratio(times.get(k), times["ours"]) for k in ("eager", "compile", "sdpa")]
                    flops = FLOPS[name](*base) * (1 if p == "fwd" else 3) if name in FLOPS else None
                    util = mfu(flops / times["ours"], gemm_dtype(name, base)) if flops else "–"
                    row = (f"| {shape} | {str(dtype).removeprefix('torch.')} | {threads} | {p} | " + " | ".join(cells)
                           + " | " + " | ".join(rs) + f" | {util} |")
                    lines.append(row)
                    print(row, flush=True)


def _no_grad(fn, inputs):
    with torch.no_grad():
        return fn(*inputs)


def memory_section(args, lines):
    torch.set_num_threads(max(args.threads))
    lines.append("\n## Peak memory\n")
    lines.append("| op | shape | dtype | pass | ours MB | eager MB | sdpa MB | ours / eager |")
    lines.append("|---|---|---|---|---|---|---|---|")
    if args.quick:
        t, n, c, v = 256, 128, 64, 1000
    else:
        t, n, c, v = 8192, 8192, 768, 32000
    q = torch.randn(1, t, 12, 64)
    k = torch.randn(1, t, 4, 64)
    vv = torch.randn(1, t, 4, 64)
    with torch.no_grad():
        mem = {"ours": peak_memory(lambda: ops.attention(q, k, vv)),
               "eager": peak_memory(lambda: ops.attention_reference(q, k, vv)),
               "sdpa": peak_memory(lambda: _sdpa(q, k, vv))}
    lines.append(f"| attention | q [1, {t}, 12, 64], kv heads 4 | float32 | fwd | {mem['ours'] / 2**20:.1f} | "
                 f"{mem['eager'] / 2**20:.1f} | {mem['sdpa'] / 2**20:.1f} | {mem['ours'] / mem['eager']:.3f} |")
    for dtype in args.dtypes:
        h = torch.randn(n, c, dtype=dtype)
        w = 0.02 * torch.randn(v, c, dtype=dtype)
        tg = torch.randint(0, v, (n,))
        mem = {"ours": peak_memory(lambda: fwd_bwd(ops.linear_cross_entropy, (h, w, tg), (0, 1))),
               "eager": peak_memory(lambda: fwd_bwd(ops.linear_cross_entropy_reference, (h, w, tg), (0, 1)))}
        lines.append(f"| linear_cross_entropy | hidden [{n}, {c}], vocab {v} | {str(dtype).removeprefix('torch.')} | "
                     f"fwd+bwd | {mem['ours'] / 2**20:.1f} | {mem['eager'] / 2**20:.1f} | – | "
                     f"{mem['ours'] / mem['eager']:.3f} |")
    for line in lines[-1 - len(args.dtypes):]:
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run, not a measurement")
    parser.add_argument("--tiny", action="store_true",
                        help="attention and linear_cross_entropy at model_tiny's shapes (a short run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "ops_cpu.md")
    add_isa_argument(parser)
    args = parser.parse_args()
    enter_isa(args.isa)
    torch._dynamo.config.cache_size_limit = 64
    args.dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    names = args.ops.split(",")
    unknown = [n for n in names if n not in OPS]
    if unknown:
        parser.error(f"unknown op(s) {unknown}; choose from {', '.join(OPS)}")

    start = time.time()
    lines = ["# Fused ops on the CPU", "", "Command: `python " + " ".join(["scripts/bench_ops.py", *sys.argv[1:]]) + "`",
             "", *environment(), "",
             "Times are medians of repeated runs in one process, the contenders taking turns call by call; a ratio is baseline / ours (> 1: ours is faster).",
             "`eager` is the op's pure-PyTorch reference, `compile` is `torch.compile` of it, `sdpa` is "
             "`F.scaled_dot_product_attention(..., enable_gqa=True)` on transposed views. MFU (attention, "
             "linear_cross_entropy): model FLOPs (fwd+bwd = 3x fwd; causal attention counts seq / 2 keys) "
             "per second over the measured GEMM peak of the dtype the op multiplies in (linear_cross_entropy: "
             "fp32 for bf16 inputs on a CPU whose bf16 GEMMs measure no faster than fp32 ones)."]
    for name in names:
        run_op(name, args, lines)
    if not args.no_memory:
        memory_section(args, lines)
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
