#!/usr/bin/env python3
"""One training step (forward, backward, AdamW) of the whole model: tokens/s and peak memory.

    python scripts/bench_model.py                       # -> benchmarks/model_cpu.md
    python scripts/bench_model.py --models tiny --seq 256 --dtypes bfloat16 --output /tmp/m.md
    python scripts/bench_model.py --isa avx2 --output benchmarks/model_cpu_avx2.md   # an AVX2-only CPU

Variants, each on the same config and weights (dropout 0), measured in one process:
  ours          kr-mini-llm Transformer on the fused ops
  ours-compile  ours under torch.compile (train.py's compile: true; the ops stay kernels in the graph)
  ours-ref      the same model on the pure-PyTorch reference ops
  hf-sdpa       transformers LlamaForCausalLM, attn_implementation="sdpa"
  hf-eager      transformers LlamaForCausalLM, attn_implementation="eager"
  hf-compile    hf-sdpa under torch.compile (the strongest baseline a user can pick)
bf16 rows run every variant under torch.autocast("cpu", dtype=torch.bfloat16) with fp32 weights;
by default bf16 rows run only where bf16 is native (the training precision rule). Variants are
interleaved step by step; MFU is against the GEMM peak measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (add_isa_argument, bf16_native, enter_isa, environment, interleaved_medians,  # noqa: E402
                          mfu, peak_memory, write_report)

from kr_mini_llm import Transformer, TransformerConfig  # noqa: E402
from kr_mini_llm.device import precision_choice  # noqa: E402
from kr_mini_llm.model.hf import config_to_hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ours", "ours-compile", "ours-ref", "hf-sdpa", "hf-eager", "hf-compile"]
COMPILED = ("ours-compile", "hf-compile")


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
    if variant in ("ours", "ours-compile"):
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
    fwd = torch.compile(model) if variant in COMPILED else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = fwd(input_ids=ids, labels=ids).loss if is_hf else fwd(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def train_flops_per_token(config: TransformerConfig, seq: int) -> float:
    """Training FLOPs per token: 6 per weight of every matmul (the LM head included) plus causal
    attention's 2 * seq * hidden per layer forward (QK^T and PV over seq / 2 keys on average), x3."""
    C, L = config.hidden_size, config.num_layers
    kv = config.num_kv_heads * (C // config.num_heads)
    per_layer = 2 * C * C + 2 * C * kv + 3 * C * config.intermediate_size
    return 6 * (L * per_layer + config.vocab_size * C) + 3 * L * 2 * seq * C


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--seq", default="256,1024")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch = tokens / seq)")
    p.add_argument("--cases", default=None, help="model:seq pairs (e.g. small:1024,tiny:256) instead of "
                                                      "every --models x --seq")
    p.add_argument("--dtypes", default=None, help="default: float32, and bfloat16 where it is native")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "model_cpu.md")
    add_isa_argument(p)
    args = p.parse_args()
    enter_isa(args.isa)
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if args.dtypes is None:
        args.dtypes = "float32,bfloat16" if bf16_native()[0] else "float32"
    start = time.time()
    lines = ["# One training step on the CPU", "", "Command: `python " + " ".join(["scripts/bench_model.py", *sys.argv[1:]]) + "`",
             "", *environment(), f"- Threads: {args.threads}, {args.tokens} tokens per step, AdamW (fused), dropout 0",
             f"- bf16: {bf16_native()[1]}", f"- Training precision here: {precision_choice(torch.device('cpu'), True)[1]}", "",
             "Tokens/s are medians over repeated steps after a warm-up step, the variants taking turns (an "
             "untimed step of a variant before each timed one, so its memory is as its own last step left it); peak MB is the largest amount of memory torch had allocated during one step beyond what was "
             "allocated before it (activations, gradients, temporaries). Ratios: ours / baseline tokens/s, "
             "ours / baseline peak memory. MFU: training FLOPs (6 per matmul weight per token, LM head included, "
             "plus causal attention) per second over the measured GEMM peak of the dtype.", "",
             "| model | seq | batch | dtype | variant | tokens/s | MFU | peak MB | tok/s vs ours | mem vs ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if args.cases:
        cases = [(c.split(":")[0], [int(c.split(":")[1])]) for c in args.cases.split(",")]
    else:
        cases = [(name, [int(s) for s in args.seq.split(",")]) for name in args.models.split(",")]
    for name, seqs in cases:
        config = getattr(TransformerConfig, name)().replace(dropout=0.0)
        for seq in seqs:
            batch = max(1, args.tokens // seq)
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
            x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
            flops_per_token = train_flops_per_token(config, seq)
            for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
                steps, models = {}, []
                torch._dynamo.reset()  # once per case: a reset between two compiled variants would recompile the first
                for variant in variants:
                    torch.manual_seed(0)
                    base = Transformer(config.replace(max_seq_length=max(seq, config.max_seq_length)))
                    model = build(variant, base.config, base)
                    steps[variant] = make_step(variant, model, dtype, x, y)
                    steps[variant]()  # warm-up (and compile)
                    models.append(model)
                times = interleaved_medians(steps, args.repeats, warmup=0, budget_s=600, settle=1)
                results = {v: (batch * seq / t, peak_memory(steps[v])) for v, t in times.items()}
                del steps, models
                ours_tps, ours_mem = results.get("ours", (None, None))
                for variant, (tps, mem) in results.items():
                    vs_t = f"{ours_tps / tps:.2f}x" if ours_tps else "–"
                    vs_m = f"{ours_mem / mem:.2f}x" if ours_mem else "–"
                    row = (f"| {name} | {seq} | {batch} | {str(dtype).removeprefix('torch.')} | {variant} | "
                           f"{tps:,.0f} | {mfu(tps * flops_per_token, dtype)} | {mem / 2**20:,.0f} | {vs_t} | {vs_m} |")
                    lines.append(row)
                    print(row, flush=True)
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
