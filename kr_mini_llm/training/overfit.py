"""The first sanity run of a new setup: overfit one small batch (`scripts/train.py --overfit_batch`).

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

from .task import PretrainingTask, TaskBuild
from .trainer import Trainer

__all__ = ["OverfitTask", "OverfitTrainer", "RepeatedBatch", "overfit_config", "OVERFIT_LOSS"]

OVERFIT_LOSS = 0.1  # "near zero": the model reproduces the batch (perplexity ~1.1)


def overfit_config(config, steps: int = 300):
    """The run's TrainingConfig: `steps` steps at a constant learning rate after a short warmup,
    no gradient accumulation, evaluation and a checkpoint only at the end, no samples, no
    early stopping, time or pass limit, no dropout (passes mean nothing on one repeated batch, and
    dropout works against reproducing it)."""
    train = dataclasses.replace(
        config.train, max_steps=steps, lr_schedule="constant", warmup_steps=min(20, steps), eval_steps=steps,
        save_steps=steps, gradient_accumulation_steps=1, effective_batch_size=None, sample_prompts=[],
        early_stopping_patience=None, max_time_minutes=None, max_epochs=None, dropout=0.0,
        dropout_after_epochs=0.0, keep_checkpoints=1)
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


class OverfitTask(PretrainingTask):
    """Pretraining on one repeated batch; `evaluate` reports the loss on that batch."""

    def __init__(self):
        self.first_loss = None

    def build(self, context) -> TaskBuild:
        built = super().build(context)
        return dataclasses.replace(built, batches=RepeatedBatch(built.batches))

    @torch.no_grad()
    def evaluate(self, run) -> dict:
        run.model.eval()
        x, y = (t.to(run.device) for t in run.batches.batch)
        with run.autocast():
            loss = float(run.model(x, y))
        run.model.train()
        return {"step": run.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": loss / (math.log(2) * self.train_shards.bytes_per_token)}

    def after_step(self, run, loss: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss

    def eval_line(self, result: dict) -> str:
        return f"step {result['step']}: loss on the batch {result['val_loss']:.4f}"


class OverfitTrainer(Trainer):
    """The Trainer with OverfitTask; `first_loss` is the loss of the first step of this run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, task=OverfitTask(), **kwargs)

    @property
    def first_loss(self) -> float | None:
        return self.task.first_loss
