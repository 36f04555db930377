"""Peak memory of this process on a device, for the training log lines ("Peak mem 1.234 GB"),
and the peak torch itself allocates while a piece of code runs (`allocated_peak_bytes`)."""
from __future__ import annotations

import sys

import torch


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by torch; MPS: memory the driver holds now; CPU: peak resident set
    size of the process (everything it ever held at once, weights included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def peak_memory_gb(device: torch.device) -> float:
    return peak_memory_bytes(device) / 1e9


def allocated_peak_bytes(fn, device: torch.device | str = "cpu") -> int:
    """Peak of the bytes torch allocates on `device` while fn() runs, above what was allocated
    before. CUDA: the caching allocator's statistics; CPU: the allocation and free events of
    the profiler's memory tracking (exact, whatever else the machine runs, unlike resident set
    size, which counts the allocator's slack and the libraries too)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"allocated_peak_bytes: no allocator statistics for {device.type}; use cpu or cuda")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return int(peak)


def training_step_peak_bytes(model_config, batch_size: int, seq_len: int, precision: str = "fp32",
                             gradient_checkpointing: bool = False, steps: int = 2) -> int:
    """allocated_peak_bytes (CPU) of building the model and the Trainer's AdamW and running
    `steps` optimizer steps on random tokens as the Trainer does (autocast, clipping, zero_grad
    to None); from the second step on the optimizer state is in place. What
    TransformerConfig.estimate_memory predicts."""
    from types import SimpleNamespace

    from ..model import Transformer
    from .optim import build_optimizer

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), generator=gen)
    y = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), generator=gen)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    train = SimpleNamespace(weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.95)

    def run():
        model = Transformer(model_config).set_gradient_checkpointing(gradient_checkpointing).train()
        opt = build_optimizer(model, train, torch.device("cpu"))
        for _ in range(steps):
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    return allocated_peak_bytes(run)
