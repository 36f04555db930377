"""Seed 001's first sanity run: overfit one small batch (`scripts/train.py --overfit_batch`).

A model, optimizer and loss that work drive the training loss on a single repeated batch
towards zero within a few hundred steps; one that does not (a broken gradient, a wrong
shift of the labels, a learning rate that is off) shows it here in seconds instead of after
a day of training. The same Trainer loop runs, with two hooks overridden: the data is the
first training batch, over and over, and evaluation is the loss on that batch.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .trainer import Trainer

__all__ = ["OverfitTrainer", "RepeatedBatch", "overfit_config", "OVERFIT_LOSS"]

OVERFIT_LOSS = 0.1  # "near zero": the model reproduces the batch (perplexity ~1.1)


def overfit_config(config, steps: int = 300):
    """The run's TrainingConfig: `steps` steps at a constant learning rate after a short warmup,
    no gradient accumulation, evaluation and a checkpoint only at the end, no samples, no
    early stopping or time limit."""
    train = dataclasses.replace(
        config.train, max_steps=steps, lr_schedule="constant", warmup_steps=min(20, steps), eval_steps=steps,
        save_steps=steps, gradient_accumulation_steps=1, effective_batch_size=None, sample_prompts=[],
        early_stopping_patience=None, max_time_minutes=None, keep_checkpoints=1)
    return config.replace(train=train)


class RepeatedBatch:
    """The first batch of `batches`, forever; checkpoints record the wrapped stream's state."""

    def __init__(self, batches):
        self.inner = batches
        self.batch = next(batches)

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class OverfitTrainer(Trainer):
    """Trainer on one repeated batch; `evaluate` reports the loss on that batch."""

    def _build(self, resume_from) -> None:
        super()._build(resume_from)
        self.batches = RepeatedBatch(self.batches)
        self.first_loss = None

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        x, y = (t.to(self.device) for t in self.batches.batch)
        with self._autocast():
            loss = float(self.model(x, y))
        self.model.train()
        return {"step": self.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": loss / (math.log(2) * self.train_shards.bytes_per_token)}

    def _train_step(self) -> float:
        loss = super()._train_step()
        if self.first_loss is None:
            self.first_loss = loss
        return loss

    def _eval_line(self, result: dict) -> str:
        return f"step {result['step']}: loss on the batch {result['val_loss']:.4f}"
