#!/usr/bin/env python3
"""TransformerConfig.estimate_memory against the measured peak of real training steps.

    python scripts/bench_memory_estimate.py [--output benchmarks/memory_estimate_cpu.md]

For each configuration (models, batch x sequence, fp32/bf16, gradient checkpointing) it measures
the peak bytes torch's CPU allocator holds while building the model and AdamW and running two
optimizer steps as the Trainer does (kr_mini_llm.training.memory.training_step_peak_bytes, from
the profiler's allocation events, so other processes on the machine do not change it) and prints
the estimate beside it. The test (tests/training/test_memory_estimate.py) holds a few of these rows to 15%.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import environment, write_report  # noqa: E402

from kr_mini_llm import TransformerConfig  # noqa: E402
from kr_mini_llm.training.memory import training_step_peak_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=344,
             max_seq_length=256)
MODELS = {
    "model_tiny.yaml": lambda: TransformerConfig.from_yaml(ROOT / "configs/model_tiny.yaml"),
    "small V512": lambda: TransformerConfig(**SMALL),
    "qk-norm, tied, MQA": lambda: TransformerConfig(**{**SMALL, "vocab_size": 2000, "qk_norm": True,
                                                        "tie_word_embeddings": True, "num_kv_heads": 1}),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="benchmarks/memory_estimate_cpu.md")
    a = ap.parse_args(argv)
    start = time.time()
    lines = ["# Training memory: estimate against measured peak (CPU allocator)", "",
             f"Command: `python scripts/bench_memory_estimate.py --output {a.output}`", "", *environment(), "",
             "| model | batch x seq | precision | checkpointing | measured MiB | estimate MiB | estimate / measured |",
             "|---|---|---|---|---:|---:|---:|"]
    worst = 0.0
    for name, make in MODELS.items():
        for batch, seq in ((8, 128), (2, 256)):
            for precision in ("fp32", "bf16"):
                for ckpt in (False, True):
                    cfg = make()
                    measured = training_step_peak_bytes(cfg, batch, seq, precision, ckpt)
                    est = cfg.estimate_memory(batch, seq, precision, "adamw", ckpt).total_bytes
                    worst = max(worst, abs(est / measured - 1))
                    row = (f"| {name} | {batch} x {seq} | {precision} | {'on' if ckpt else 'off'} | "
                           f"{measured / 2**20:.1f} | {est / 2**20:.1f} | {est / measured:.3f} |")
                    print(row, flush=True)
                    lines.append(row)
    lines += ["", f"Largest deviation: {worst:.1%}. The measured peak is what torch allocates (exact, whatever else "
              "runs on the machine); the framework's own resident memory is outside both columns."]
    write_report(a.output, lines, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
