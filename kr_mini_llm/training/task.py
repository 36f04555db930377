"""What a run trains, as the loop in trainer.py sees it: a task object.

The Trainer owns the loop (steps, schedule, logging, evaluation and checkpoint cadence, signals,
ranks through DistributedContext); a task owns what differs between runs: the data, the model
and its optimizer groups, how to resume, evaluate and save. Pretraining is PretrainingTask;
`--overfit_batch` (overfit.py) and LoRA fine-tuning (lora/trainer.py) are tasks too.

`build` receives a RunContext (the settings and where the run runs) and returns a TaskBuild (the
model, the step's forward, optimizer, batches and tokenizer), which the Trainer keeps as its own
attributes. The other methods take the run (the Trainer) for those, its step and state.
"""
from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..io import layout
from ..checkpoint import CheckpointError, resolve_checkpoint
from .distributed import check_global_batch
from .optim import build_optimizer
from .run_checkpoint import load_checkpoint

if TYPE_CHECKING:
    from ..model import TransformerConfig
    from .config import TrainingConfig
    from .distributed import DistributedContext


@dataclass(frozen=True)
class RunContext:
    """What a task builds from: the run's settings and where it runs."""
    config: TrainingConfig
    model_config: TransformerConfig
    device: torch.device         # cuda:LOCAL_RANK under torchrun
    dist: DistributedContext     # ranks, agreement, the DDP/FSDP wrapper
    amp_dtype: torch.dtype | None  # the autocast dtype, None for full precision
    output_dir: Path

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@dataclass
class TaskBuild:
    """What a task built for the loop."""
    model: torch.nn.Module       # the plain module: evaluation, sampling, saving
    forward: Callable            # what a training step calls: the model, or its DDP/FSDP wrapper
    optimizer: torch.optim.Optimizer
    batches: Any                 # an iterator of micro-batches with state_dict()/load_state_dict()
    tokenizer: Any               # the Tokenizer, or None for a task that has none
    tokenizer_path: str | None


class TrainingTask(ABC):
    # Warn before building when a full-training step will not fit (memory_advice.py); a task the
    # full-training estimate does not describe (LoRA) turns it off.
    check_memory = True

    @abstractmethod
    def build(self, context: RunContext) -> TaskBuild:
        """The model on context.device, what a step calls, its optimizer, the training batches and
        the tokenizer."""

    @abstractmethod
    def evaluate(self, run) -> dict:
        """{"step", "val_loss", ...} at run.step."""

    @abstractmethod
    def save(self, run) -> Path | None:
        """Writes what a later run resumes from (every rank calls this); its path, or None."""

    def resume(self, run, path) -> None:
        """Restores run.step, run.state, the optimizer and the data position from `path`. A task
        that saves nothing to resume from keeps this refusal."""
        raise ValueError(f"{type(self).__name__} cannot resume a run (resume_from={path}); start without it")

    def save_run_configs(self, run) -> None:
        """What the output directory records of the run, written once when training starts."""

    def start(self, run) -> None:
        """Called when train() starts, before the first step."""

    def after_step(self, run, loss: float) -> None:
        """Called after every optimizer step with its loss."""

    def loss(self, run, batch) -> torch.Tensor:
        """The training loss of one micro-batch from run.batches (called under autocast; the loop
        scales and backpropagates it). Next-token loss of (inputs, targets) by default."""
        x, y = batch
        return run.forward(x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True))

    def step_tokens(self, run) -> int:
        """Tokens the last optimizer step trained on."""
        return run.effective_batch * run.config.train.max_seq_length

    def train_tokens(self, run) -> int | None:
        """Tokens in one pass over the training data, where the task knows (train.dropout_after_epochs)."""
        return None

    def report(self, run, row: dict, progress) -> None:
        """Called every log_steps with the metrics row (before it is written to metrics.jsonl)."""
        if progress is not None:
            progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_sec']:,.0f}")

    def eval_line(self, result: dict) -> str:
        return (f"step {result['step']}: val_loss {result['val_loss']:.4f}, ppl {result['val_ppl']:.1f}, "
                f"bpb {result['val_bpb']:.3f}")


class PretrainingTask(TrainingTask):
    """Next-token prediction on token shards (data/datasets.py), checkpoints of training/run_checkpoint.py."""

    def build(self, context: RunContext) -> TaskBuild:
        from ..data.datasets import EvalWindows, RandomWindows, TokenShards
        from ..data.tokenizer import Tokenizer
        from ..model import Transformer

        config, model_config, t, dist = context.config, context.model_config, context.config.train, context.dist
        # Data first: a missing or mismatched shard fails before any model is built (on every rank).
        tokenizer_path = config.data.tokenizer
        with dist.agree("reading the tokenizer and token shards"):
            tokenizer = Tokenizer(tokenizer_path)
            if tokenizer.vocab_size > model_config.vocab_size:
                raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size "
                                 f"is {model_config.vocab_size}; set vocab_size >= {tokenizer.vocab_size}")
            fingerprint = tokenizer.fingerprint
            self.train_shards = TokenShards(config.data.tokens, "train", expected_fingerprint=fingerprint)
            self.valid_shards = TokenShards(config.data.tokens, "valid", expected_fingerprint=fingerprint)
            batches = RandomWindows(self.train_shards, t.max_seq_length, t.batch_size, seed=config.seed,
                                    rank=dist.rank, world_size=dist.world_size)
        self.EvalWindows = EvalWindows

        torch.manual_seed(config.seed)
        model = Transformer(model_config, ops_impl=t.ops).to(context.device)
        if t.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        # DDP: a wrapper for training steps (model stays the plain module); FSDP2: shards in place.
        forward = dist.wrap_model(model, t, context.amp_dtype)
        optimizer = build_optimizer(model, t, context.device)
        return TaskBuild(model=model, forward=forward, optimizer=optimizer, batches=batches, tokenizer=tokenizer,
                         tokenizer_path=tokenizer_path)

    def train_tokens(self, run) -> int:
        return self.train_shards.num_tokens

    def resume(self, run, path) -> None:
        with run.dist.agree(f"resuming from {path}"):
            saved = load_checkpoint(resolve_checkpoint(path), run.model, run.optimizer)
            check_resumable(saved)
            check_global_batch(saved, run.effective_batch, run.dist.world_size)
            run.step = saved["step"]
            try:
                run.batches.load_state_dict(saved["data"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{saved['path']}/{layout.TRAINER_STATE}: the data position cannot be "
                                      f"restored ({type(e).__name__}: {e})") from None
            run.state.update({k: saved[k] for k in run.state if k in saved})

    @torch.no_grad()
    def evaluate(self, run) -> dict:
        t, dist = run.config.train, run.dist
        run.model.eval()
        total_loss, total_tokens = 0.0, 0
        # eval_batches per rank: the same windows as one process with batch_size x world_size.
        windows = self.EvalWindows(self.valid_shards, t.max_seq_length, t.batch_size,
                                   max_batches=t.eval_batches * dist.world_size)
        for x, y, counted in dist.eval_share(windows):  # this rank's batches
            x, y = x.to(run.device), y.to(run.device)
            with run.autocast():
                loss = run.model(x, y)
            n = y.numel() if counted else 0
            total_loss += loss.item() * n
            total_tokens += n
        total_loss, total_tokens = dist.sum(total_loss, total_tokens)
        val_loss = total_loss / max(total_tokens, 1)
        result = {"step": run.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)),
                  "val_bpb": val_loss / (math.log(2) * self.valid_shards.bytes_per_token)}
        if dist.samples_here and t.sample_prompts and run.sampler is not None:
            # Under FSDP every rank takes part in the sample's forwards; rank 0 keeps it.
            prompt = t.sample_prompts[0]
            sample = prompt + run.sampler(run.model, run.tokenizer, prompt, t.sample_max_new_tokens)
            if dist.is_main:
                result["sample"] = sample
        run.model.train()
        return result

    def save(self, run) -> Path | None:
        """Saves checkpoint-STEP (every rank calls this); returns its path on rank 0."""
        state = {**run.state, "data": run.batches.state_dict(), "global_batch": run.effective_batch}
        return run.dist.save_checkpoint(run.output_dir, run.step, run.model, run.optimizer, state, run.config,
                                        run.model_config, run.tokenizer_path, keep=run.config.train.keep_checkpoints)

    def save_run_configs(self, run) -> None:
        run.config.save_yaml(run.output_dir / layout.TRAINING_CONFIG)
        run.model_config.save_yaml(run.output_dir / layout.MODEL_CONFIG)


def check_resumable(saved: dict) -> None:
    """A checkpoint resumes only with the state the trainer saved: step and data position."""
    where = f"{saved.get('path', 'the checkpoint')}/{layout.TRAINER_STATE}"
    if not isinstance(saved.get("step"), int) or saved["step"] < 0:
        raise CheckpointError(f"{where}: 'step' is {saved.get('step')!r}, not a step number; the file is damaged")
    if not isinstance(saved.get("data"), dict):
        raise CheckpointError(f"{where} has no 'data' (the position in the token stream), so training cannot "
                              "continue exactly where it stopped. A fused or converted model is not a training "
                              "checkpoint: start a new run from it (--model_config and fresh training) instead")
