#!/usr/bin/env python3
"""Generation speed: decode tokens/s, time to first token, peak memory; ours against HF generate.

    python scripts/bench_generate.py                     # -> benchmarks/generate_cpu.md
    python scripts/bench_generate.py --models tiny --batches 1 --new_tokens 32 --output /tmp/g.md

Both run greedy decoding with a KV cache on the same random weights (ours: Generator on the fused
decode ops; HF: LlamaForCausalLM.generate, sdpa attention, built from the same weights), for a
fixed number of new tokens (no early stop). Time to first token = the prefill of the prompt plus
the first sampled token; decode tokens/s = (new tokens - 1) * batch / (total time - TTFT).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, write_report, peak_memory  # noqa: E402
from bench_model import hf_model  # noqa: E402

from kr_mini_llm import Transformer, TransformerConfig  # noqa: E402
from kr_mini_llm.inference import Generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class _Ids:
    """The Generator needs only eos_id from a tokenizer when fed token ids."""
    eos_id = -1


def run_ours(gen: Generator, prompts, new_tokens):
    t0 = time.perf_counter()
    ttft = None
    for i, _ in enumerate(gen.generate_ids(prompts, new_tokens, temperature=0.0, stop_at_eos=False)):
        if i == 0:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


def run_hf(model, prompts, new_tokens):
    ids = torch.tensor(prompts)
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        total = time.perf_counter() - t0
    return ttft, total


def measure(fn, repeats):
    runs = sorted((fn() for _ in range(repeats)), key=lambda r: r[1])
    return runs[len(runs) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt_len", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "generate_cpu.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    lines = ["# Generation on the CPU", "", "Command: `python " + " ".join(["scripts/bench_generate.py", *sys.argv[1:]]) + "`",
             "", *environment(),
             f"- Threads: {args.threads}; prompt {args.prompt_len} tokens; {args.new_tokens} new tokens, greedy, fp32",
             "", "Medians of repeated runs (by total time). Ratios are ours / HF (decode) and HF / ours (TTFT): > 1 means ours is better.",
             "", "| model | batch | impl | TTFT ms | decode tok/s | peak MB | decode vs HF | TTFT vs HF |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        config = getattr(TransformerConfig, name)().replace(dropout=0.0)
        config = config.replace(max_seq_length=max(config.max_seq_length, args.prompt_len + args.new_tokens))
        torch.manual_seed(0)
        ours = Transformer(config).eval()
        gen = Generator(ours, _Ids(), "cpu")
        hf = hf_model(config, ours, "sdpa").eval()
        for batch in [int(b) for b in args.batches.split(",")]:
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(4, config.vocab_size, (batch, args.prompt_len), generator=g).tolist()
            res = {}
            for impl, fn in (("ours", lambda: run_ours(gen, prompts, args.new_tokens)),
                             ("hf", lambda: run_hf(hf, prompts, args.new_tokens))):
                fn()  # warm-up
                ttft, total = measure(fn, args.repeats)
                decode = (args.new_tokens - 1) * batch / max(total - ttft, 1e-9)
                mem = peak_memory(fn)
                res[impl] = (ttft, decode, mem)
            for impl, (ttft, decode, mem) in res.items():
                vs_d = f"{res['ours'][1] / res['hf'][1]:.2f}x" if impl == "ours" else "–"
                vs_t = f"{res['hf'][0] / res['ours'][0]:.2f}x" if impl == "ours" else "–"
                row = f"| {name} | {batch} | {impl} | {ttft * 1e3:,.0f} | {decode:,.1f} | {mem / 2**20:,.1f} | {vs_d} | {vs_t} |"
                lines.append(row)
                print(row, flush=True)
    lines.append("\nNot compared: llama.cpp (kr-mini-llm has no GGUF export yet).")
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
