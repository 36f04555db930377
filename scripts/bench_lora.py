#!/usr/bin/env python3
"""LoRA training step on the CPU: kr-mini-llm LoRA vs kr-mini-llm full fine-tuning vs HF
transformers + peft, same weights, same rank, same layers, same optimizer (AdamW).

    python scripts/bench_lora.py                 # model_small, seq 512 -> benchmarks/lora_cpu.md
    python scripts/bench_lora.py --quick         # model_tiny, seq 128: checks that it runs

Tokens/s: batch x seq_len / median step time (forward, backward, optimizer step), the three
variants timed in turn so that noise on a shared machine hits them alike.
Step peak: the most bytes torch holds at once during one step beyond what it held before the
step (profiler allocation events), measured after warm-up so optimizer state already exists.
Peak total: that plus the memory at rest (weights, trainable gradients' buffers, optimizer state).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_isa_argument, enter_isa, environment, peak_memory  # noqa: E402

from kr_mini_llm import Transformer, TransformerConfig  # noqa: E402
from kr_mini_llm.lora import LoRAParameters, apply_lora, trainable_parameters  # noqa: E402

KEYS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def resting_bytes(model, optimizer) -> int:
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    for state in optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    total += sum(p.numel() * p.element_size() for p in params.values() if p.requires_grad)  # .grad buffers
    return total


def make_step(forward_loss, model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        loss = forward_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def interleaved_medians(steps: dict, repeats: int, warmup: int = 2) -> dict:
    """Median step time of each variant, the variants timed in turn (round-robin), so that a
    busy machine slows them alike instead of whichever happened to run during the noise."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            gc.collect()
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="configs/model_small.yaml")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="model_tiny, seq 128, batch 2, 3 repeats: a smoke run")
    p.add_argument("--output", default="benchmarks/lora_cpu.md")
    add_isa_argument(p)
    args = p.parse_args(argv)
    enter_isa(args.isa)
    if args.quick:
        args.model_config, args.seq_len, args.batch_size, args.repeats = "configs/model_tiny.yaml", 128, 2, 3
        args.num_layers = min(args.num_layers, 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    import peft
    import transformers

    # Dropout off in every variant, so all three do the same arithmetic.
    config = TransformerConfig.from_yaml(args.model_config).replace(dropout=0.0)
    B, T = args.batch_size, args.seq_len
    torch.manual_seed(0)
    x = torch.randint(0, config.vocab_size, (B, T))
    y = torch.roll(x, -1, 1)
    tokens = B * T
    print(f"{args.model_config}: {config.num_parameters / 1e6:.1f}M parameters, batch {B} x seq {T}, "
          f"rank {args.rank}, last {args.num_layers} layers, {torch.get_num_threads()} threads")
    variants = {}  # name -> (model, step, optimizer)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        base = Transformer(config)
        base.save_hf(tmp)
        state = base.state_dict()
        del base

        ours = Transformer(config)
        ours.load_state_dict(state)
        apply_lora(ours, args.num_layers, LoRAParameters(rank=args.rank, scale=20.0, keys=["q", "k", "v", "o"]))
        lora_trainable = len(trainable_parameters(ours))
        full = Transformer(config)
        full.load_state_dict(state)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        depth = config.num_layers
        lcfg = peft.LoraConfig(r=args.rank, lora_alpha=20.0 * args.rank, lora_dropout=0.0, target_modules=KEYS,
                               layers_to_transform=list(range(depth - args.num_layers, depth)),
                               task_type="CAUSAL_LM")
        hf = peft.get_peft_model(hf, lcfg)
        assert sum(1 for p in hf.parameters() if p.requires_grad) == lora_trainable
        for name, model, loss in (("kr-mini-llm LoRA", ours, lambda: ours(x, y)),
                                  ("kr-mini-llm full fine-tuning", full, lambda: full(x, y)),
                                  (f"HF transformers + peft ({hf.config._attn_implementation})", hf,
                                   lambda: hf(input_ids=x, labels=x).loss)):
            model.train()
            variants[name] = (model, *make_step(loss, model))
    seconds = interleaved_medians({n: v[1] for n, v in variants.items()}, args.repeats)
    results = []
    for name, (model, step, optimizer) in variants.items():
        step_peak = peak_memory(step)
        rest = resting_bytes(model, optimizer)
        r = {"name": name, "tok_s": tokens / seconds[name], "seconds": seconds[name], "step_peak": step_peak,
             "total": rest + step_peak, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        print(f"  {name}: {r['tok_s']:,.0f} tok/s, step {r['seconds']:.3f}s, step peak {step_peak / 2**20:,.0f} MiB, "
              f"total {r['total'] / 2**20:,.0f} MiB", flush=True)
        results.append(r)
    write_report(args, config, results)
    return 0


def write_report(args, config, results):
    ours, full, hf = results
    lines = [
        "# LoRA training step on the CPU",
        "",
        f"Command: `python scripts/bench_lora.py{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}`",
        "",
        f"- Model: `{args.model_config}` ({config.num_parameters / 1e6:.1f}M parameters, {config.num_layers} layers, "
        f"vocab {config.vocab_size}), dropout off, float32",
        f"- Batch {args.batch_size} x sequence {args.seq_len}; LoRA rank {args.rank}, scale 20, on q/k/v/o of the "
        f"last {args.num_layers} layers; AdamW on the trainable parameters; {torch.get_num_threads()} threads",
        *environment(),
        "",
        f"Tokens/s = batch x seq / median of {args.repeats} step times (forward + backward + optimizer step), "
        "the variants timed in turn. Step peak = the most "
        "bytes torch holds at once during a step beyond what it held before it (profiler allocation events). "
        "Total = step peak + memory at rest (weights, gradient buffers of trainable parameters, optimizer state).",
        "",
        "| variant | trainable params | tokens/s | step (s) | step peak (MiB) | total (MiB) | tokens/s vs PEFT | total vs PEFT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['trainable']:,} | {r['tok_s']:,.0f} | {r['seconds']:.3f} | "
                     f"{r['step_peak'] / 2**20:,.0f} | {r['total'] / 2**20:,.0f} | {r['tok_s'] / hf['tok_s']:.2f}x | "
                     f"{r['total'] / hf['total']:.2f}x |")
    lines += [
        "",
        f"Target: LoRA tokens/s >= 1.3x PEFT's -> {ours['tok_s'] / hf['tok_s']:.2f}x "
        f"({'met' if ours['tok_s'] >= 1.3 * hf['tok_s'] else 'NOT met'}); peak memory <= 0.8x PEFT's -> "
        f"{ours['total'] / hf['total']:.2f}x total, {ours['step_peak'] / hf['step_peak']:.2f}x step peak "
        f"({'met' if ours['total'] <= 0.8 * hf['total'] else 'NOT met'} on total).",
        f"LoRA vs full fine-tuning of the same model: {ours['tok_s'] / full['tok_s']:.2f}x tokens/s, "
        f"{ours['total'] / full['total']:.2f}x total memory.",
        "",
    ]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
