"""DPO on the fine-tuning task (lora/trainer.py), so on the one trainer loop: the same model set-up
(LoRA, DoRA or full), schedules, checkpoints and resume; here only the batches (preference pairs),
the loss, the metrics and the reference model differ.

The reference is the base model: with adapters, the same model with its adapters switched off (no
second copy); with full fine-tuning, a frozen copy made before the first step. With
precompute_ref_log_probs, the reference log-probabilities of every pair are computed once before
training (and again on resume, from the same base) and the copy is not kept.
"""
from __future__ import annotations

import copy
import time

import torch

from ..lora.apply import adapters_disabled
from ..lora.trainer import LoRATask, LoRATrainer
from ..training.task import RunContext, TaskBuild
from .data import PreferenceBatches, collate_pairs, eval_pair_batches
from .loss import PairStats, dpo_loss, sequence_logps


class DPOTask(LoRATask):
    def build(self, context: RunContext) -> TaskBuild:
        built = super().build(context)
        self.train_stats = PairStats()
        self.reference = copy.deepcopy(built.model).requires_grad_(False).eval() if self.full else None
        if self.lora.precompute_ref_log_probs:
            start = time.perf_counter()
            for dataset in (self.train_set, self.valid_set):
                self.precompute(context, built, dataset)
            self.reference = None
            self.log(f"Reference log-probabilities of {len(self.train_set) + len(self.valid_set)} pairs computed in "
                     f"{time.perf_counter() - start:.1f}s")
        return built

    def make_batches(self, tokenizer):
        return PreferenceBatches(self.train_set, self.lora.batch_size, seed=self.lora.seed, pad_id=tokenizer.pad_id)

    @torch.no_grad()
    def reference_logps(self, model, x, y) -> torch.Tensor:
        """Of the reference: the frozen copy, or `model` (the one trained) with its adapters off."""
        if self.reference is not None:
            return sequence_logps(self.reference, x, y)
        was_training = model.training
        model.eval()
        try:
            with adapters_disabled(model):
                return sequence_logps(model, x, y)
        finally:
            model.train(was_training)

    def precompute(self, context: RunContext, built: TaskBuild, dataset) -> None:
        order = dataset.length_order()
        size = self.lora.batch_size
        for i in range(0, len(order), size):
            idx = order[i:i + size]
            batch, _ = collate_pairs([dataset.examples[k] for k in idx], built.tokenizer.pad_id)
            with context.autocast():
                x, y = batch.x.to(context.device), batch.y.to(context.device)
                logps = self.reference_logps(built.model, x, y).double().cpu()
            for j, k in enumerate(idx):
                dataset.examples[k].ref_logps = (float(logps[j]), float(logps[j + len(idx)]))

    def pair_loss(self, run, batch, model) -> tuple:
        x, y = batch.x.to(run.device, non_blocking=True), batch.y.to(run.device, non_blocking=True)
        ref = batch.ref_logps.to(run.device) if batch.ref_logps is not None else self.reference_logps(run.model, x, y)
        return dpo_loss(sequence_logps(model, x, y), ref, self.lora.beta)

    def loss(self, run, batch) -> torch.Tensor:
        loss, stats = self.pair_loss(run, batch, run.forward)
        if torch.is_grad_enabled():  # a training micro-batch (the loop also probes a loss without gradients)
            self.train_stats.add(stats)
        return loss

    @torch.no_grad()
    def evaluate(self, run) -> dict:
        start = time.perf_counter()
        return {"step": run.step, **self.evaluate_on(run, self.valid_set, self.lora.val_batches),
                "val_time_s": time.perf_counter() - start}

    @torch.no_grad()
    def evaluate_on(self, run, dataset, max_batches: int) -> dict:
        was_training = run.model.training
        run.model.eval()
        stats = PairStats()
        for batch in eval_pair_batches(dataset, self.lora.batch_size, max_batches, run.tokenizer.pad_id):
            with run.autocast():
                stats.add(self.pair_loss(run, batch, run.model)[1])
        run.model.train(was_training)
        m = stats.means()
        return {"val_loss": m["loss"], "val_reward_accuracy": m["reward_accuracy"],
                "val_reward_margin": m["reward_margin"], "val_reward_chosen": m["reward_chosen"],
                "val_reward_rejected": m["reward_rejected"]}

    def report(self, run, row: dict, progress) -> None:
        m = self.train_stats.means()
        row.update({"reward_accuracy": m.get("reward_accuracy"), "reward_margin": m.get("reward_margin"),
                    "reward_chosen": m.get("reward_chosen"), "reward_rejected": m.get("reward_rejected")})
        super().report(run, row, progress)
        run.say(f"Iter {row['step']}: Reward accuracy {row['reward_accuracy']:.3f}, Reward margin "
                f"{row['reward_margin']:.3f}, Chosen reward {row['reward_chosen']:.3f}, Rejected reward "
                f"{row['reward_rejected']:.3f}")

    def eval_line(self, result: dict) -> str:
        return (f"Iter {result['step']}: Val loss {result['val_loss']:.3f}, Val reward accuracy "
                f"{result['val_reward_accuracy']:.3f}, Val reward margin {result['val_reward_margin']:.3f}, "
                f"Val took {result['val_time_s']:.3f}s")

    def adapter_config(self, run) -> dict:
        return {**super().adapter_config(run), "objective": "dpo"}


class DPOTrainer(LoRATrainer):
    def __init__(self, cfg, base, train_set, valid_set, show_progress: bool = True, overwrite: bool = False,
                 log=print):
        super().__init__(cfg, base, train_set, valid_set, show_progress=show_progress, overwrite=overwrite, log=log,
                         task=DPOTask(cfg, base, train_set, valid_set, log))
