#!/usr/bin/env python3
"""Quality of the packed inference weights: test-split perplexity and greedy agreement against fp32.

    python scripts/bench_quantization.py --model checkpoints/demo --data data/processed/test.txt
    python scripts/bench_quantization.py --model checkpoints/demo --data data/processed/test.txt \\
        --random small --output benchmarks/quantization_quality.md

For the trained model (--model) and, with --random NAME, a random model of that preset (same tokenizer,
seed 0), every scheme (fp32, bf16, int8 per output channel and per group, int4 per group of 32, 64
and 128) is scored on the same tokens:
perplexity over --max_tokens tokens of --data in windows of the model's context, and greedy agreement
with fp32 over --prompts prompts (the first lines of --data, 16 tokens each): how many of the first
--new_tokens tokens equal fp32's before the first difference, and how many prompts agree on all of them.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_isa_argument, enter_isa, environment, write_report  # noqa: E402

from kr_mini_llm import KVCache, Transformer, TransformerConfig  # noqa: E402
from kr_mini_llm.data.tokenizer import Tokenizer  # noqa: E402
from kr_mini_llm.inference import Generator  # noqa: E402
from kr_mini_llm.inference.decode_model import DecodeModel  # noqa: E402
from kr_mini_llm.ops.decode_linear import kernel_description  # noqa: E402
from kr_mini_llm.checkpoint import resolve_checkpoint  # noqa: E402
from kr_mini_llm.training import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def schemes(config: TransformerConfig):
    """(label, dtype, group_size) for every scheme the model's sizes allow (int4: layers whose input
    size the group does not divide stay int8 per channel, and the label says which)."""
    sizes = {config.hidden_size, config.num_heads * config.resolved_head_dim, config.intermediate_size}
    out = [("fp32", "fp32", None), ("bf16", "bf16", None), ("int8 per channel", "int8", None)]
    for g in (128, 64, 32, 16):
        if all(k % g == 0 for k in sizes):
            out.append((f"int8 group {g}", "int8", g))
            if len(out) == 5:
                break
    for g in (32, 64, 128):
        if config.hidden_size % g == 0:
            stay = [n for n, k in (("attention o", config.num_heads * config.resolved_head_dim),
                                   ("MLP down", config.intermediate_size)) if k % g]
            out.append((f"int4 group {g}" + (f" ({', '.join(stay)} int8)" if stay else ""), "int4", g))
    return out


@torch.inference_mode()
def perplexity(model: DecodeModel, ids: torch.Tensor, window: int, step: int | None = None) -> float:
    """exp(mean NLL) over windows of the model's context. step=None: each window in one call (the
    prefill path: GEMMs); step=S: S tokens per call through a KV cache, as generation computes
    (the decode kernels, in the precision they meet the weights in, and the cache's dtype)."""
    nll, count = 0.0, 0
    for s in range(0, ids.numel() - 1, window):
        chunk = ids[s:s + window + 1]
        if chunk.numel() < 2:
            break
        inp = chunk[:-1].unsqueeze(0)
        if step is None:
            logits = model(inp)[0]
        else:
            cache = KVCache.for_model(model.config, 1, inp.shape[1], dtype=model.cache_dtype)
            logits = torch.cat([model(inp[:, t:t + step], kv_cache=cache)[0] for t in range(0, inp.shape[1], step)])
        nll += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    return math.exp(nll / count)


def greedy(model: DecodeModel, prompts, new_tokens):
    class _Ids:
        eos_id = -1
        vocab_size = model.config.vocab_size

    steps = list(Generator(model, _Ids(), "cpu").generate_ids(prompts, new_tokens, stop_at_eos=False))
    return [[s[b] for s in steps] for b in range(len(prompts))]


def agreement(seqs, ref):
    prefix = []
    for a, b in zip(seqs, ref):
        n = 0
        while n < len(a) and a[n] == b[n]:
            n += 1
        prefix.append(n)
    return sum(prefix) / len(prefix), sum(p == len(ref[0]) for p in prefix)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained checkpoint (or output) directory")
    p.add_argument("--data", type=Path, required=True, help="held-out text, e.g. data/processed/test.txt")
    p.add_argument("--random", default="small", help="also score a random model of this preset ('' to skip)")
    p.add_argument("--max_tokens", type=int, default=8192)
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--decode_step", type=int, default=8,
                   help="tokens per call for the decode-path perplexity (the decode kernels take up to 16 rows)")
    p.add_argument("--dtypes", default="fp32,bf16,int8,int4", help="the weight dtypes to score (fp32 always)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "quantization_quality.md")
    add_isa_argument(p)
    args = p.parse_args()
    enter_isa(args.isa)
    start = time.time()
    ckpt = resolve_checkpoint(args.model)
    tok = Tokenizer(str(ckpt / "tokenizer.model"))
    text = args.data.read_text(encoding="utf-8")
    ids = torch.tensor(tok.encode(text)[:args.max_tokens])
    lines_ = [ln for ln in text.splitlines() if ln.strip()]
    prompts = [[tok.bos_id] + tok.encode(ln)[:16] for ln in lines_[:args.prompts]]

    models = []
    config = TransformerConfig.from_yaml(ckpt / "model_config.yaml")
    trained = Transformer(config)
    load_checkpoint(ckpt, trained)
    models.append((f"trained {ckpt.name} ({config.num_parameters / 1e6:.1f}M)", trained.eval()))
    if args.random:
        rc = getattr(TransformerConfig, args.random)().replace(dropout=0.0)
        torch.manual_seed(0)
        models.append((f"random model_{args.random} ({rc.num_parameters / 1e6:.1f}M)", Transformer(rc).eval()))

    out = ["# Quality of the packed inference weights", "",
           "Command: `python " + " ".join(["scripts/bench_quantization.py", *sys.argv[1:]]) + "`", "", *environment(),
           f"- Perplexity over the first {ids.numel():,} tokens of `{args.data}`; greedy agreement with fp32 "
           f"over {len(prompts)} prompts x {args.new_tokens} new tokens",
           f"- Prefill path: each window in one call (GEMMs on the dequantized weights). Decode path: "
           f"{args.decode_step} tokens per call through the KV cache, as generation computes them "
           f"(bf16 weights: {kernel_description('bf16')}; int8: {kernel_description('int8')}; "
           f"int4: {kernel_description('int4')})",
           "", "| model | weights | MB | perplexity, prefill path | vs fp32 | perplexity, decode path | vs fp32 | "
           f"tokens equal to fp32 before the first difference (mean of {args.new_tokens}) | prompts identical for all "
           f"{args.new_tokens} |", "|---|---|---|---|---|---|---|---|---|"]
    for label, model in models:
        window = model.config.max_seq_length
        ref = None
        dtypes = {"fp32", *args.dtypes.split(",")}
        for name, dtype, group in [s for s in schemes(model.config) if s[1] in dtypes]:
            packed = DecodeModel.from_transformer(model, dtype, group)
            ppl = perplexity(packed, ids, window)
            ppl_decode = perplexity(packed, ids, window, args.decode_step)
            seqs = greedy(packed, prompts, args.new_tokens)
            if ref is None:
                ref = ppl, ppl_decode, seqs
            mean_prefix, identical = agreement(seqs, ref[2])
            row = (f"| {label} | {name} | {packed.nbytes() / 2**20:,.1f} | {ppl:,.3f} | {100 * (ppl / ref[0] - 1):+.2f}% | "
                   f"{ppl_decode:,.3f} | {100 * (ppl_decode / ref[1] - 1):+.2f}% | {mean_prefix:.1f} | "
                   f"{identical}/{len(prompts)} |")
            out.append(row)
            print(row, flush=True)
    write_report(args.output, out, start)


if __name__ == "__main__":
    main()
