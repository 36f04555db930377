"""Generation at batch 1: time to the first token of a 128-token prompt, decode tokens/s and
peak memory, measured in a fresh process per model so one model's memory never counts for
another."""
from __future__ import annotations

import statistics
import time

__all__ = ["generation_speed", "PROMPT_TOKENS"]

PROMPT_TOKENS = 128


def _measure(model_dir: str, prompt_ids: list[int], new_tokens: int, repeats: int, device: str | None,
             threads: int | None) -> dict:
    import torch

    from ..inference import Generator
    from ..device import peak_memory_bytes

    if threads:
        torch.set_num_threads(threads)
    gen = Generator.from_pretrained(model_dir, device=device)
    ctx = gen.model.config.max_seq_length
    # The full prompt when the context allows it with at least 16 new tokens; new tokens yield first.
    prompt = prompt_ids[:max(1, min(len(prompt_ids), ctx - 17))]
    new_tokens = max(1, min(new_tokens, ctx - len(prompt) - 1))

    def once(n):
        t0 = time.perf_counter()
        first = None
        count = 0
        for _ in gen.generate_ids([prompt], n, temperature=0.0, stop_at_eos=False):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return first - t0, (count - 1) / (end - first) if count > 1 else float("nan")

    once(min(4, new_tokens))          # warm-up: first-call allocations, kernel selection
    runs = [once(new_tokens) for _ in range(repeats)]
    return {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats,
            "ttft_s": statistics.median(r[0] for r in runs),
            "decode_tokens_per_s": statistics.median(r[1] for r in runs),
            "peak_memory_bytes": peak_memory_bytes(gen.device), "device": str(gen.device),
            "threads": torch.get_num_threads()}


def generation_speed(model_dir, prompt_ids: list[int], new_tokens: int = 64, repeats: int = 3,
                     device: str | None = None, threads: int | None = None) -> dict:
    """Runs the measurement in a spawned process; peak_memory_bytes is that process's peak
    resident set (CPU: weights, KV cache, the framework itself) or torch's peak allocation (CUDA)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (str(model_dir), list(map(int, prompt_ids)), new_tokens, repeats, device, threads))
