"""The peak memory of a training step, measured: what TransformerConfig.estimate_memory predicts.
(The peak memory of a process or of a piece of code is device.py's.)"""
from __future__ import annotations

import torch

from ..device import allocated_peak_bytes


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
