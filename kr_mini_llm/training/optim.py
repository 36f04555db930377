"""AdamW with decoupled weight decay on matrices only, and the warmup + decay schedule."""
from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, train, device: torch.device) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists for CUDA and CPU (and MPS in recent torch); fall back quietly.
    fused = device.type in ("cuda", "cpu", "mps")
    try:
        return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2), fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2))


def learning_rate(step: int, train) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine/linear decay."""
    peak, floor = train.learning_rate, train.min_learning_rate
    if step < train.warmup_steps:
        return peak * (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return peak
    span = max(1, train.max_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    if train.lr_schedule == "linear":
        return floor + (peak - floor) * (1 - progress)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
