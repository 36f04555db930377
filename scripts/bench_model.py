#!/usr/bin/env python3
"""One training step (forward, backward, AdamW) of the whole model: tokens/s and peak memory.

    python scripts/bench_model.py                       # -> benchmarks/model_cpu.md
    python scripts/bench_model.py --models tiny --seq 256 --dtypes bfloat16 --output /tmp/m.md

Variants, each on the same config and weights (dropout 0), measured in one process:
  ours          kr-mini-llm Transformer on the fused ops
  ours-ref      the same model on the pure-PyTorch reference ops
  hf-sdpa       transformers LlamaForCausalLM, attn_implementation="sdpa"
  hf-eager      transformers LlamaForCausalLM, attn_implementation="eager"
  hf-compile    hf-sdpa under torch.compile (the strongest baseline a user can pick)
bf16 rows run every variant under torch.autocast("cpu", dtype=torch.bfloat16) with fp32 weights.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, write_report, median_time, peak_memory  # noqa: E402

from kr_mini_llm import Transformer, TransformerConfig  # noqa: E402
from kr_mini_llm.model.hf import config_to_hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ours", "ours-ref", "hf-sdpa", "hf-eager", "hf-compile"]


def hf_model(config: TransformerConfig, ours: Transformer, attn: str):
    import transformers

    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in config_to_hf(config).items()
                                         if k not in ("architectures", "model_type", "torch_dtype")})
    model = transformers.LlamaForCausalLM._from_config(hf_cfg, attn_implementation=attn)
    state = {("model." + k if not k.startswith("lm_head") else k): v for k, v in ours.state_dict().items()}
    model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def build(variant: str, config: TransformerConfig, base: Transformer):
    if variant == "ours":
        return base
    if variant == "ours-ref":
        m = Transformer(config, ops_impl="reference")
        m.load_state_dict(base.state_dict())
        return m
    attn = "eager" if variant == "hf-eager" else "sdpa"
    return hf_model(config, base, attn)


def make_step(variant, model, dtype, ids, labels):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    is_hf = variant.startswith("hf")
    if variant == "hf-compile":
        torch._dynamo.reset()
    fwd = torch.compile(model) if variant == "hf-compile" else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = fwd(input_ids=ids, labels=ids).loss if is_hf else fwd(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--seq", default="256,1024")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch = tokens / seq)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "model_cpu.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    start = time.time()
    lines = ["# One training step on the CPU", "", "Command: `python " + " ".join(["scripts/bench_model.py", *sys.argv[1:]]) + "`",
             "", *environment(), f"- Threads: {args.threads}, {args.tokens} tokens per step, AdamW (fused), dropout 0", "",
             "Tokens/s are medians over repeated steps after a warm-up step; peak MB is the largest amount of "
             "memory torch had allocated during one step beyond what was allocated before it (activations, "
             "gradients, temporaries). Ratios: ours / baseline tokens/s, ours / baseline peak memory.", "",
             "| model | seq | batch | dtype | variant | tokens/s | peak MB | tok/s vs ours | mem vs ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        config = getattr(TransformerConfig, name)().replace(dropout=0.0)
        for seq in [int(s) for s in args.seq.split(",")]:
            batch = max(1, args.tokens // seq)
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
            x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
            for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
                results = {}
                for variant in variants:
                    torch.manual_seed(0)
                    base = Transformer(config.replace(max_seq_length=max(seq, config.max_seq_length)))
                    model = build(variant, base.config, base)
                    step = make_step(variant, model, dtype, x, y)
                    step()  # warm-up (and compile)
                    t = median_time(step, args.repeats, warmup=0, budget_s=120)
                    mem = peak_memory(step)
                    results[variant] = (batch * seq / t, mem)
                    del model, base, step
                ours_tps, ours_mem = results.get("ours", (None, None))
                for variant, (tps, mem) in results.items():
                    vs_t = f"{ours_tps / tps:.2f}x" if ours_tps else "–"
                    vs_m = f"{ours_mem / mem:.2f}x" if ours_mem else "–"
                    row = (f"| {name} | {seq} | {batch} | {str(dtype).removeprefix('torch.')} | {variant} | "
                           f"{tps:,.0f} | {mem / 2**20:,.0f} | {vs_t} | {vs_m} |")
                    lines.append(row)
                    print(row, flush=True)
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
