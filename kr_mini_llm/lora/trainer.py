"""LoRA fine-tuning on the shared trainer loop (training/trainer.py), not a copy of it.

LoRATrainer supplies the task's own parts through the loop's hooks: the model (the base with
adapters, only A and B trainable), the SFT batches, the optimizer (adam/adamw/sgd), evaluation
on valid.jsonl, adapter files instead of checkpoints, and mlx-lm's log lines:

    Iter 10: Train loss 2.345, Learning Rate 1.000e-05, It/sec 4.500, Tokens/sec 1000.000, Trained Tokens 2304, Peak mem 1.234 GB
    Iter 200: Val loss 1.234, Val took 3.210s
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from ..data.sft import SFTBatches, SFTDataset, eval_batches
from ..training.checkpoint import rng_state, set_rng_state
from ..training.memory import peak_memory_gb
from ..training.trainer import Trainer
from .adapters import (WEIGHTS_NAME, load_adapter_weights, load_training_state, model_fingerprint, numbered_name,
                       save_adapter_weights, state_path, write_adapter_config)
from .apply import LoRAError, apply_lora, describe_trainable, trainable_parameters
from .base import BaseModel
from .config import LoRAConfig


def build_optimizer(params, cfg: LoRAConfig) -> torch.optim.Optimizer:
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


class LoRATrainer(Trainer):
    check_memory = False  # frozen base: no gradients or optimizer state for most weights

    def __init__(self, cfg: LoRAConfig, base: BaseModel, train_set: SFTDataset, valid_set: SFTDataset,
                 show_progress: bool = True, overwrite: bool = False, log=print):
        check_one_process()
        self.lora, self.base, self.train_set, self.valid_set, self.log = cfg, base, train_set, valid_set, log
        weights = Path(cfg.adapter_path) / WEIGHTS_NAME
        resuming_here = cfg.resume_adapter_file and Path(cfg.resume_adapter_file).parent.resolve() == weights.parent.resolve()
        if weights.exists() and not (overwrite or resuming_here):
            raise LoRAError(f"--adapter-path {cfg.adapter_path} already holds {WEIGHTS_NAME}; continue it with "
                            f"--resume-adapter-file {weights}, choose another --adapter-path, or delete it")
        max_len = train_set.max_seq_length
        super().__init__(base.model.config, cfg.training_config(max_len), output_dir=cfg.adapter_path,
                         resume_from=cfg.resume_adapter_file, show_progress=show_progress)

    # -- the task's own part of the loop -------------------------------------------------------
    def _build(self, resume_from) -> None:
        from ..data.tokenizer import Tokenizer

        cfg, model = self.lora, self.base.model
        self.tokenizer_path = str(self.base.tokenizer_path)
        self.tokenizer = Tokenizer(self.tokenizer_path)
        if self.tokenizer.vocab_size > model.config.vocab_size:
            raise LoRAError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                            f"{model.config.vocab_size}; pass the tokenizer the base model was trained with")
        self.base_fingerprint = model_fingerprint(model)
        torch.manual_seed(cfg.seed)
        self.num_layers = cfg.layers_for(len(model.layers))
        apply_lora(model, self.num_layers, cfg.lora_parameters)
        self.model = model.to(self.device).train()
        self.forward = self.model  # fine-tuning runs in one process (no DDP/FSDP wrapper)
        self.model.set_gradient_checkpointing(cfg.grad_checkpoint)
        self.batches = SFTBatches(self.train_set, cfg.batch_size, seed=cfg.seed, pad_id=self.tokenizer.pad_id)
        self.optimizer = build_optimizer(trainable_parameters(self.model), cfg)
        self.state = {"tokens_seen": 0, "best_val_loss": None, "evals_without_improvement": 0, "elapsed_s": 0.0}
        self.step = 0
        self._losses = []
        self._step_token_count = 0
        if resume_from is not None:
            self._resume(Path(resume_from))

    def _resume(self, file: Path) -> None:
        meta = load_adapter_weights(self.model, file, self.base_fingerprint)
        step = int(meta.get("step", 0))
        saved = load_training_state(file, step, meta.get("state_blake2b"))
        if saved is None:
            self.log(f"Resuming from the weights of {file} (no {state_path(file).name} beside it: optimizer and "
                     "data order start afresh, iterations count from 0)")
            return
        if step >= self.lora.iters:
            raise LoRAError(f"{file} was saved at iteration {step}, and --iters is {self.lora.iters}: nothing left "
                            f"to train; --iters counts from the start, so raise it above {step}")
        self.optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        self.batches.load_state_dict(saved["data"])
        self.state.update(saved["trainer"])
        self.step = step
        self.log(f"Resuming from {file} at iteration {step}")

    def describe(self) -> str:
        return describe_trainable(self.model)

    def _train_step(self) -> float:
        loss = super()._train_step()
        self._losses.append(loss)
        return loss

    def _step_tokens(self) -> int:
        # Input tokens of the micro-batches this step used (padding excluded), as mlx-lm counts them.
        return self.batches.pop_tokens()

    def evaluate(self) -> dict:
        start = time.perf_counter()
        loss, _ = evaluate_loss(self.model, self.valid_set, self.lora.batch_size, self.lora.val_batches,
                                self.device, self._autocast)
        return {"step": self.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_time_s": time.perf_counter() - start}

    def save(self) -> Path:
        out = Path(self.lora.adapter_path)
        state = {"optimizer": self.optimizer.state_dict(), "rng": rng_state(), "data": self.batches.state_dict(),
                 "trainer": dict(self.state)}
        latest = save_adapter_weights(out / WEIGHTS_NAME, self.model, self.base_fingerprint, self.step, state)
        if self.step % self.lora.save_every == 0:
            numbered = save_adapter_weights(out / numbered_name(self.step), self.model, self.base_fingerprint,
                                            self.step, state)
            self._say(self._bar, f"Iter {self.step}: Saved adapter weights to {latest} and {numbered}.")
        return latest

    def _save_run_configs(self) -> None:
        write_adapter_config(self.output_dir, self.adapter_config())

    def adapter_config(self) -> dict:
        cfg = self.lora.to_dict()
        lp = cfg.pop("lora_parameters")
        return {"model": str(self.lora.model), "base_model_fingerprint": self.base_fingerprint,
                "base_model_config": self.model_config.to_dict(), "tokenizer_fingerprint": self.tokenizer.fingerprint,
                "fine_tune_type": "lora", "num_layers": self.num_layers, "lora_parameters": lp,
                **{k: v for k, v in cfg.items() if k not in ("model", "num_layers", "fine_tune_type")},
                "max_seq_length": self.config.train.max_seq_length}

    def _report(self, row: dict, progress) -> None:
        row["train_loss"] = sum(self._losses) / max(len(self._losses), 1)  # mean since the last report
        row["peak_mem_gb"] = peak_memory_gb(self.device)
        self._losses = []
        self._say(progress, f"Iter {row['step']}: Train loss {row['train_loss']:.3f}, Learning Rate {row['lr']:.3e}, "
                            f"It/sec {row['it_per_sec']:.3f}, Tokens/sec {row['tokens_per_sec']:.3f}, "
                            f"Trained Tokens {row['tokens_seen']}, Peak mem {row['peak_mem_gb']:.3f} GB")
        super()._report(row, progress)

    def _eval_line(self, result: dict) -> str:
        return f"Iter {result['step']}: Val loss {result['val_loss']:.3f}, Val took {result['val_time_s']:.3f}s"

    def _progress(self):
        self._bar = super()._progress()
        return self._bar

    def train(self, stop_after: int | None = None) -> dict:
        self._bar = None
        if self.step == 0:  # as mlx-lm: the validation loss before the first update
            self._say(None, self._eval_line(self.evaluate()))
        return super().train(stop_after)
