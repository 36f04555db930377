"""Fine-tuning (LoRA, DoRA or full) on the shared trainer loop (training/trainer.py), not a copy of it.

LoRATask is the task the loop runs (training/task.py): the model (the base with adapters, only
the adapters trainable; or, with fine_tune_type full, every weight), the SFT batches, the
optimizer (adam/adamw/sgd), evaluation on valid.jsonl, and mlx-lm's log lines. Adapters are
saved as adapter files (adapters.py); a full fine-tune as the ordinary checkpoint-N directories
of training/run_checkpoint.py, which every loader takes and which resume like pretraining's.
dpo/trainer.py runs preference tuning on this same task, with its own batches, loss and metrics.

    Iter 10: Train loss 2.345, Learning Rate 1.000e-05, It/sec 4.500, Tokens/sec 1000.000, Trained Tokens 2304, Peak mem 1.234 GB
    Iter 200: Val loss 1.234, Val took 3.210s
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from ..io.outputs import OutputError, check_not_input
from ..data.sft import SFTBatches, SFTDataset, eval_batches
from ..checkpoint import list_checkpoints, resolve_checkpoint
from ..device import peak_memory_gb
from ..training import optim
from ..training.run_checkpoint import load_checkpoint, rng_state, set_rng_state
from ..training.task import RunContext, TaskBuild, TrainingTask, check_resumable
from ..training.trainer import Trainer
from .adapters import (WEIGHTS_NAME, load_adapter_weights, load_training_state, model_fingerprint, numbered_name,
                       save_adapter_weights, state_path, write_adapter_config)
from .apply import LoRAError, apply_lora, describe_trainable, trainable_parameters
from .base import BaseModel
from .config import LoRAConfig


# A full fine-tune keeps this many checkpoint-N directories (each holds the weights and optimizer state).
KEEP_FULL_CHECKPOINTS = 2


def build_optimizer(model, cfg: LoRAConfig, context: RunContext) -> torch.optim.Optimizer:
    if cfg.fine_tune_type == "full" and cfg.optimizer == "adamw":
        return optim.build_optimizer(model, context.config.train, context.device)  # pretraining's: no decay on norms
    params = trainable_parameters(model)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate)
    return torch.optim.SGD(params, lr=cfg.learning_rate)


@torch.no_grad()
def evaluate_loss(model, dataset: SFTDataset, batch_size: int, max_batches: int, device,
                  autocast=contextlib.nullcontext) -> tuple:
    """(mean loss over the trained tokens, number of tokens) of up to max_batches batches."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for x, y in eval_batches(dataset, batch_size, max_batches):
        n = int((y != -100).sum())
        with autocast():
            total += float(model(x.to(device), y.to(device))) * n
        tokens += n
    model.train(was_training)
    return total / max(tokens, 1), tokens


def check_one_process() -> None:
    """Fine-tuning runs in one process: under torchrun every rank would train the same batches and
    write the same adapter files at once."""
    from ..training.distributed import env_world_size

    if env_world_size() > 1:
        raise LoRAError(f"LoRA fine-tuning runs in one process, but WORLD_SIZE={env_world_size()} (torchrun started "
                        "several): each would train the same batches and overwrite the others' adapter files. "
                        "Run scripts/lora.py without torchrun (--device picks the GPU)")


class LoRATask(TrainingTask):
    def __init__(self, cfg: LoRAConfig, base: BaseModel, train_set, valid_set, log=print):
        self.lora, self.base, self.train_set, self.valid_set, self.log = cfg, base, train_set, valid_set, log
        self.full = cfg.fine_tune_type == "full"
        # The full-training memory estimate describes a full fine-tune, not a frozen base with adapters.
        self.check_memory = self.full
        self._losses = []

    def build(self, context: RunContext) -> TaskBuild:
        from ..data.tokenizer import Tokenizer

        cfg, model = self.lora, self.base.model
        tokenizer_path = str(self.base.tokenizer_path)
        tokenizer = Tokenizer(tokenizer_path)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise LoRAError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                            f"{model.config.vocab_size}; pass the tokenizer the base model was trained with")
        self.base_fingerprint = model_fingerprint(model)
        torch.manual_seed(cfg.seed)
        if self.full:
            self.num_layers = None
            model.requires_grad_(True)
        else:
            self.num_layers = cfg.layers_for(len(model.layers))
            apply_lora(model, self.num_layers, cfg.lora_parameters, dora=cfg.fine_tune_type == "dora")
        model = model.to(context.device).train()
        model.set_gradient_checkpointing(cfg.grad_checkpoint)
        batches = self.make_batches(tokenizer)
        optimizer = build_optimizer(model, cfg, context)
        # fine-tuning runs in one process: a step calls the model itself (no DDP/FSDP wrapper)
        return TaskBuild(model=model, forward=model, optimizer=optimizer, batches=batches, tokenizer=tokenizer,
                         tokenizer_path=tokenizer_path)

    def make_batches(self, tokenizer):
        return SFTBatches(self.train_set, self.lora.batch_size, seed=self.lora.seed, pad_id=tokenizer.pad_id)

    def check_steps_left(self, where, step: int) -> None:
        if step >= self.lora.iters:
            raise LoRAError(f"{where} was saved at iteration {step}, and --iters is {self.lora.iters}: nothing left "
                            f"to train; --iters counts from the start, so raise it above {step}")

    def resume(self, run, path) -> None:
        if self.full:
            return self.resume_checkpoint(run, path)
        file = Path(path)
        meta = load_adapter_weights(run.model, file, self.base_fingerprint)
        step = int(meta.get("step", 0))
        saved = load_training_state(file, step, meta.get("state_blake2b"))
        if saved is None:
            self.log(f"Resuming from the weights of {file} (no {state_path(file).name} beside it: optimizer and "
                     "data order start afresh, iterations count from 0)")
            return
        self.check_steps_left(file, step)
        run.optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        run.batches.load_state_dict(saved["data"])
        run.state.update(saved["trainer"])
        run.step = step
        self.log(f"Resuming from {file} at iteration {step}")

    def resume_checkpoint(self, run, path) -> None:
        """A full fine-tune continues from a checkpoint-N directory (or the latest in an output directory)."""
        ckpt = resolve_checkpoint(path)
        saved = load_checkpoint(ckpt, run.model, run.optimizer)  # weights, optimizer and RNG
        check_resumable(saved)
        self.check_steps_left(ckpt, saved["step"])
        run.batches.load_state_dict(saved["data"])
        run.state.update({k: saved[k] for k in run.state if k in saved})
        run.step = saved["step"]
        self.log(f"Resuming from {ckpt} at iteration {run.step}")

    def start(self, run) -> None:
        if run.step == 0:  # as mlx-lm: the validation loss before the first update
            run.say(self.eval_line(self.evaluate(run)))

    def after_step(self, run, loss: float) -> None:
        self._losses.append(loss)

    def step_tokens(self, run) -> int:
        # Input tokens of the micro-batches this step used (padding excluded), as mlx-lm counts them.
        return run.batches.pop_tokens()

    def evaluate(self, run) -> dict:
        start = time.perf_counter()
        loss, _ = evaluate_loss(run.model, self.valid_set, self.lora.batch_size, self.lora.val_batches,
                                run.device, run.autocast)
        return {"step": run.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_time_s": time.perf_counter() - start}

    def save(self, run) -> Path:
        out = Path(self.lora.adapter_path)
        if self.full:
            state = {**run.state, "data": run.batches.state_dict()}
            path = run.dist.save_checkpoint(out, run.step, run.model, run.optimizer, state, run.config,
                                            run.model_config, run.tokenizer_path, keep=KEEP_FULL_CHECKPOINTS)
            if run.step % self.lora.save_every == 0:
                run.say(f"Iter {run.step}: Saved the model to {path}.")
            return path
        state = {"optimizer": run.optimizer.state_dict(), "rng": rng_state(), "data": run.batches.state_dict(),
                 "trainer": dict(run.state)}
        latest = save_adapter_weights(out / WEIGHTS_NAME, run.model, self.base_fingerprint, run.step, state)
        if run.step % self.lora.save_every == 0:
            numbered = save_adapter_weights(out / numbered_name(run.step), run.model, self.base_fingerprint,
                                            run.step, state)
            run.say(f"Iter {run.step}: Saved adapter weights to {latest} and {numbered}.")
        return latest

    def save_run_configs(self, run) -> None:
        write_adapter_config(run.output_dir, self.adapter_config(run))

    def adapter_config(self, run) -> dict:
        cfg = self.lora.to_dict()
        lp = cfg.pop("lora_parameters")
        return {"model": str(self.lora.model), "base_model_fingerprint": self.base_fingerprint,
                "base_model_config": run.model_config.to_dict(), "tokenizer_fingerprint": run.tokenizer.fingerprint,
                "fine_tune_type": self.lora.fine_tune_type, "num_layers": self.num_layers,
                **({} if self.full else {"lora_parameters": lp}),
                **{k: v for k, v in cfg.items() if k not in ("model", "num_layers", "fine_tune_type")},
                "max_seq_length": run.config.train.max_seq_length}

    def report(self, run, row: dict, progress) -> None:
        row["train_loss"] = sum(self._losses) / max(len(self._losses), 1)  # mean since the last report
        row["peak_mem_gb"] = peak_memory_gb(run.device)
        self._losses = []
        run.say(f"Iter {row['step']}: Train loss {row['train_loss']:.3f}, Learning Rate {row['lr']:.3e}, "
                f"It/sec {row['it_per_sec']:.3f}, Tokens/sec {row['tokens_per_sec']:.3f}, "
                f"Trained Tokens {row['tokens_seen']}, Peak mem {row['peak_mem_gb']:.3f} GB")
        super().report(run, row, progress)

    def eval_line(self, result: dict) -> str:
        return f"Iter {result['step']}: Val loss {result['val_loss']:.3f}, Val took {result['val_time_s']:.3f}s"


def check_output_is_not_input(output, *inputs) -> None:
    """A run never writes where its base model lives: --overwrite-adapters would delete it."""
    try:
        check_not_input(output, inputs, "--adapter-path")
    except OutputError as e:
        raise LoRAError(str(e)) from None


class LoRATrainer(Trainer):
    """The Trainer with LoRATask, after the checks a fine-tune needs before anything is built."""

    def __init__(self, cfg: LoRAConfig, base: BaseModel, train_set, valid_set,
                 show_progress: bool = True, overwrite: bool = False, log=print, task=None):
        check_one_process()
        check_output_is_not_input(cfg.adapter_path, base.source, cfg.model)
        resuming_here = cfg.resume_adapter_file and Path(cfg.adapter_path).resolve() in (
            Path(cfg.resume_adapter_file).resolve(), Path(cfg.resume_adapter_file).resolve().parent)
        if cfg.fine_tune_type == "full":
            found = list_checkpoints(cfg.adapter_path)
            held, resume_hint = (found[-1].name, found[-1]) if found else (None, None)
        else:
            weights = Path(cfg.adapter_path) / WEIGHTS_NAME
            held, resume_hint = (WEIGHTS_NAME, weights) if weights.exists() else (None, None)
        if held and not (overwrite or resuming_here):
            raise LoRAError(f"--adapter-path {cfg.adapter_path} already holds {held}; continue it with "
                            f"--resume-adapter-file {resume_hint}, choose another --adapter-path, or pass "
                            "--overwrite-adapters")
        super().__init__(base.model.config, cfg.training_config(train_set.max_seq_length), output_dir=cfg.adapter_path,
                         resume_from=cfg.resume_adapter_file, show_progress=show_progress, overwrite=overwrite,
                         task=task or LoRATask(cfg, base, train_set, valid_set, log))

    @property
    def num_layers(self) -> int:
        return self.task.num_layers

    def describe(self) -> str:
        return describe_trainable(self.model)

    def adapter_config(self) -> dict:
        return self.task.adapter_config(self)
