"""Before training starts: will a step fit in memory, and if not, what to change.

The remedies are the usual out-of-memory ones ("메모리 부족 (OOM) 시"), tried in this order and
applied one on top of the other until the estimate fits:
  1. halve train.batch_size and double train.gradient_accumulation_steps (same effective batch),
  2. train.gradient_checkpointing: true,
  3. a shorter train.max_seq_length (three quarters, in steps of 64),
  4. train.mixed_precision: true (bf16/fp16 activations).
The estimate is TransformerConfig.estimate_memory; the memory available is what the device
has free now (CUDA), MPS's recommended working set times mps_memory_fraction, or the
system's available memory (CPU) less a reserve for the framework itself.
"""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["training_precision", "estimate_for_run", "available_memory_bytes", "memory_advice",
           "warn_if_short_of_memory"]

CPU_FRAMEWORK_RESERVE = 512 << 20  # Python, torch's libraries and thread pools (measured ~300-500 MB)


def training_precision(train, device: torch.device) -> str:
    """The estimator's precision name for a TrainSection on a device."""
    from ..device import precision_choice

    dtype, _ = precision_choice(device, train.mixed_precision, train.precision)  # the trainer's own choice
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def estimate_for_run(model_config, train, device: torch.device):
    return model_config.estimate_memory(train.batch_size, train.max_seq_length, training_precision(train, device),
                                        "adamw", train.gradient_checkpointing)


def available_memory_bytes(device: torch.device, mps_memory_fraction: float = 0.8) -> int | None:
    """Bytes a training step may use on `device`, or None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() * mps_memory_fraction)
    try:
        import psutil

        return max(0, int(psutil.virtual_memory().available) - CPU_FRAMEWORK_RESERVE)
    except ImportError:
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            return max(0, int(info["MemAvailable"].split()[0]) * 1024 - CPU_FRAMEWORK_RESERVE)
        except (OSError, KeyError, ValueError):
            return None


def _remedies(train):
    """Yield (description, overrides) in that order, each on top of the previous ones."""
    t = train
    if t.batch_size > 1:
        b, g = t.batch_size // 2, t.gradient_accumulation_steps * 2
        change = {"train.batch_size": b, "train.gradient_accumulation_steps": g}
        yield (f"train.batch_size: {t.batch_size} → {b}, train.gradient_accumulation_steps: "
               f"{t.gradient_accumulation_steps} → {g} (same effective batch)", change)
        t = _apply(t, change)
    if not t.gradient_checkpointing:
        change = {"train.gradient_checkpointing": "true"}
        yield "train.gradient_checkpointing: false → true", change
        t = _apply(t, change)
    shorter = max(64, (t.max_seq_length * 3 // 4) // 64 * 64)
    if shorter < t.max_seq_length:
        change = {"train.max_seq_length": shorter}
        yield f"train.max_seq_length: {t.max_seq_length} → {shorter}", change
        t = _apply(t, change)
    if not t.mixed_precision:
        yield "train.mixed_precision: false → true", {"train.mixed_precision": "true"}


def memory_advice(model_config, train, device: torch.device, available: int | None) -> str | None:
    """None when the estimate fits in `available` bytes (or nothing is known); otherwise the
    message: the estimate, and the seed-000 remedies in order with the estimate after each."""
    est = estimate_for_run(model_config, train, device)
    if available is None or est.total_bytes <= available:
        return None
    gib = 2**30
    lines = [f"⚠️  메모리 부족 예상 (OOM): one step needs about {est.total_bytes / gib:.2f} GiB "
             f"(parameters {est.parameters / gib:.2f}, gradients {est.gradients / gib:.2f}, optimizer "
             f"{est.optimizer / gib:.2f}, activations {est.activations / gib:.2f}), but {available / gib:.2f} GiB "
             f"is available on {device.type}. Remedies, each on top of the ones before:"]
    t, overrides, fits = train, {}, False
    for what, change in _remedies(train):
        overrides.update(change)
        t = _apply(t, change)
        after = estimate_for_run(model_config, t, device).total_bytes
        lines.append(f"   - {what}: ~{after / gib:.2f} GiB")
        if after <= available:
            fits = True
            break
    args = " ".join(f"--set {k}={v}" for k, v in overrides.items())
    lines.append(f"   try: {args}" if fits else
                 f"   even with all of them ({args}) it does not fit: choose a smaller model config")
    return "\n".join(lines)


def _apply(train, change: dict):
    values = {k.removeprefix("train."): v for k, v in change.items()}
    for k, v in values.items():
        if v in ("true", "false"):
            values[k] = v == "true"
    if "batch_size" in values and train.effective_batch_size is not None:
        values["effective_batch_size"] = values["batch_size"] * values["gradient_accumulation_steps"]
    return dataclasses.replace(train, **values)


def warn_if_short_of_memory(model_config, config, device: torch.device, say: bool = True) -> str | None:
    """The Trainer's check before it builds anything: prints memory_advice (when there is any) on
    the main process and returns it. It warns rather than stops: the estimate leaves out the
    framework and the data loader, and the system may swap."""
    advice = memory_advice(model_config, config.train, device,
                           available_memory_bytes(device, config.mps_memory_fraction))
    if advice and say:
        print(advice, flush=True)
    return advice
