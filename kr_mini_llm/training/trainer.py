"""The training loop, for one process or many (torchrun; everything about ranks is in distributed.py).

    trainer = Trainer(model_config, train_config, output_dir="checkpoints/tiny")
    trainer.train()               # or Trainer(..., resume_from="checkpoints/tiny")
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import weakref
from pathlib import Path

import torch

from ..device import apply_memory_limit, pick_device, precision_choice
from ..io import layout
from ..io.atomic import remove_directory
from ..model import Transformer, TransformerConfig
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, nonfinite_parameters, resolve_checkpoint
from .config import TrainingConfig
from .distributed import DistributedContext, check_global_batch
from .memory_advice import warn_if_short_of_memory
from .metrics import MetricsLog, plot_loss_curve
from .optim import build_optimizer, learning_rate
from .run_lock import RunLock


class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss or non-finite weights; the last good checkpoint is kept."""


# The signals that end a run with a save: Ctrl-C, and what Slurm, Kubernetes and `timeout` send.
STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Trainer:
    # Warn before building when a full-training step will not fit (memory_advice.py); a task the
    # full-training estimate does not describe (LoRA) turns it off.
    check_memory = True

    def __init__(self, model_config: TransformerConfig, config: TrainingConfig, output_dir: str | Path | None = None,
                 resume_from: str | Path | None = None, show_progress: bool = True, overwrite: bool = False,
                 sampler=None):
        self.config = config
        self.model_config = model_config
        # sampler(model, tokenizer, prompt, max_new_tokens) -> text, for the samples at each eval
        # (scripts/train.py passes the Generator's; training does not depend on inference).
        self.sampler = sampler
        self.output_dir = Path(output_dir or config.output_dir)
        self.dist = DistributedContext(config, pick_device(config.device))
        self.device = self.dist.device  # cuda:LOCAL_RANK under torchrun
        # One run per output directory (rank 0 holds the lock for all ranks); released when train()
        # ends, when this object is collected, or at exit.
        self._lock = RunLock(self.output_dir) if self.dist.is_main else None
        with self.dist.agree(f"locking {self.output_dir}"):
            if self._lock is not None:
                self._lock.acquire()
                weakref.finalize(self, self._lock.release)
        try:
            self._setup(model_config, config, resume_from, show_progress, overwrite)
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        """Lets another run use the output directory (train() does this when it ends)."""
        if self._lock is not None:
            self._lock.release()

    def _setup(self, model_config, config, resume_from, show_progress, overwrite) -> None:
        existing = list_checkpoints(self.output_dir)
        if existing and resume_from is None:
            if not overwrite:
                raise ValueError(f"{self.output_dir} already holds checkpoints (latest {existing[-1].name}); resume with "
                                 "--resume_from, choose another --output_dir, or pass --overwrite_output_dir")
            if self.dist.is_main:
                for old in existing:
                    remove_directory(old)
        self.show_progress = show_progress and self.dist.is_main
        t = config.train
        self.effective_batch = config.check_effective_batch(self.dist.world_size)
        if t.max_seq_length > model_config.max_seq_length:
            raise ValueError(f"train.max_seq_length ({t.max_seq_length}) exceeds the model's max_seq_length "
                             f"({model_config.max_seq_length}); lower it or raise the model's")
        if config.threads:
            torch.set_num_threads(config.threads)
        apply_memory_limit(self.device, config.mps_memory_fraction)
        # bf16 on a CPU only where it is native; train.precision forces a dtype. LoRA runs this too.
        self.amp_dtype, self.precision_reason = precision_choice(self.device, t.mixed_precision, t.precision)
        if self.check_memory:
            warn_if_short_of_memory(model_config, config, self.device, self.dist.is_main)
        self._build(resume_from)
        if t.compile_model:
            self.forward = torch.compile(self.forward)

    def _build(self, resume_from) -> None:
        """The task's own part: data, model, optimizer, resumed state. A fine-tuning task (lora/)
        overrides it, and evaluate/save and the hooks below, and runs this same loop."""
        from ..data.datasets import EvalWindows, RandomWindows, TokenShards
        from ..data.tokenizer import Tokenizer

        config, model_config, t = self.config, self.model_config, self.config.train
        # Data first: a missing or mismatched shard fails before any model is built (on every rank).
        self.tokenizer_path = config.data.tokenizer
        with self.dist.agree("reading the tokenizer and token shards"):
            self.tokenizer = Tokenizer(self.tokenizer_path)
            if self.tokenizer.vocab_size > model_config.vocab_size:
                raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model's vocab_size "
                                 f"is {model_config.vocab_size}; set vocab_size >= {self.tokenizer.vocab_size}")
            fingerprint = self.tokenizer.fingerprint
            self.train_shards = TokenShards(config.data.tokens, "train", expected_fingerprint=fingerprint)
            self.valid_shards = TokenShards(config.data.tokens, "valid", expected_fingerprint=fingerprint)
            self.batches = RandomWindows(self.train_shards, t.max_seq_length, t.batch_size, seed=config.seed,
                                         rank=self.dist.rank, world_size=self.dist.world_size)
        self.EvalWindows = EvalWindows

        torch.manual_seed(config.seed)
        self.model = Transformer(model_config, ops_impl=t.ops).to(self.device)
        if t.gradient_checkpointing:
            self.model.set_gradient_checkpointing(True)
        # DDP: a wrapper for training steps (self.model stays the plain module); FSDP2: shards in place.
        self.forward = self.dist.wrap_model(self.model, t, self.amp_dtype)
        self.optimizer = build_optimizer(self.model, t, self.device)
        self.state = {"tokens_seen": 0, "best_val_loss": None, "evals_without_improvement": 0,
                      "elapsed_s": 0.0}
        self.step = 0
        if resume_from is not None:
            with self.dist.agree(f"resuming from {resume_from}"):
                saved = load_checkpoint(resolve_checkpoint(resume_from), self.model, self.optimizer)
                check_resumable(saved)
                check_global_batch(saved, self.effective_batch, self.dist.world_size)
                self.step = saved["step"]
                try:
                    self.batches.load_state_dict(saved["data"])
                except (KeyError, TypeError, ValueError) as e:
                    raise CheckpointError(f"{saved['path']}/trainer_state.json: the data position cannot be "
                                          f"restored ({type(e).__name__}: {e})") from None
                self.state.update({k: saved[k] for k in self.state if k in saved})

    # -- the loop --------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> dict:
        """Trains to train.max_steps (or until a time limit, early stop, Ctrl-C, or `stop_after` steps
        of this run), saving checkpoints on the way and at the end; returns the final metrics."""
        t = self.config.train
        first_step = self.step
        with self.dist.agree(f"locking {self.output_dir}"):
            if self._lock is not None:
                self._lock.acquire()  # again, for a second train() on this object
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._save_run_configs()
        # Resumed: the log keeps the rows up to the resumed step (a crash may have logged beyond it).
        log = MetricsLog(self.output_dir, t.tensorboard, resume_step=self.step) if self.dist.is_main else None
        progress = self._progress()
        received = {"signal": None}
        old_handlers = self._catch_stop_signals(received, progress)
        start = time.time() - self.state["elapsed_s"]
        last_log, last_step, last_tokens = time.time(), self.step, self.state["tokens_seen"]
        reason = "max_steps"
        result = {}
        try:
            while self.step < t.max_steps:
                lr = learning_rate(self.step, t)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self._train_step()
                if not math.isfinite(loss):
                    raise TrainingStopped(
                        f"loss is {loss} at step {self.step + 1}: training stopped. The last good checkpoint is "
                        f"kept in {self.output_dir}; lower train.learning_rate or check the data, then "
                        "--resume_from it.")
                self.step += 1
                self.state["tokens_seen"] += self._step_tokens()
                self.state["elapsed_s"] = time.time() - start
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if self.step % t.log_steps == 0 or self.step == 1:
                    now = time.time()
                    seconds = max(now - last_log, 1e-9)
                    tps = (self.state["tokens_seen"] - last_tokens) / seconds
                    row = {"step": self.step, "loss": loss, "lr": lr, "tokens_per_sec": tps,
                           "it_per_sec": (self.step - last_step) / seconds,
                           "tokens_seen": self.state["tokens_seen"], "elapsed_s": round(self.state["elapsed_s"], 2)}
                    last_log, last_step, last_tokens = now, self.step, self.state["tokens_seen"]
                    self._report(row, progress)
                    if log:
                        log.log(row)
                stop = None
                if self.step % t.eval_steps == 0 or self.step == t.max_steps:
                    result = self.evaluate()
                    if log:
                        log.log({"step": self.step, **result})
                    self._say(progress, self._eval_line(result))
                    if result.get("sample"):
                        self._say(progress, f"  sample: {result['sample']!r}")
                    if self._early_stop(result["val_loss"]):
                        stop = "early_stopping"
                if t.max_time_minutes is not None and self.state["elapsed_s"] >= 60 * t.max_time_minutes:
                    stop = "max_time"
                signalled = received["signal"] is not None
                if self.dist.enabled:  # every rank stops at the same step, whichever got the signal
                    signalled = self.dist.sum(float(signalled))[0] > 0
                if signalled:
                    stop = STOP_SIGNALS.get(received["signal"], "interrupted")
                if stop_after is not None and self.step - first_step >= stop_after:
                    stop = "stop_after"
                if self.step % t.save_steps == 0 or stop or self.step == t.max_steps:
                    self._check_weights_finite()
                    self.save()
                if stop:
                    reason = stop
                    break
            if result.get("step") != self.step:  # stopped between evals, or resumed at the end
                result = self.evaluate()
                if log:
                    log.log({"step": self.step, **result})
            if log:
                log.close()
                log = None
            curve = None
            if self.dist.is_main:
                curve = plot_loss_curve(self.output_dir / layout.METRICS, self.output_dir / layout.LOSS_CURVE)
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            if progress is not None:
                progress.close()
            if log:
                log.close()
            self.release_lock()
        return {"step": self.step, "stop_reason": reason, "loss_curve": str(curve) if curve else None,
                "tokens_seen": self.state["tokens_seen"], "elapsed_s": self.state["elapsed_s"], **result}

    def _catch_stop_signals(self, received: dict, progress) -> dict:
        """SIGINT and SIGTERM set `received` (the loop then saves and stops); a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only

        def on_signal(signum, frame):
            if received["signal"] is not None:
                raise KeyboardInterrupt
            received["signal"] = signum
            self._say(progress, f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                                "(send it again to stop at once, without saving)")

        return {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    def _check_weights_finite(self) -> None:
        """A save never keeps weights that the last optimizer step made NaN or inf."""
        bad = nonfinite_parameters(self.model)
        count = int(self.dist.sum(float(len(bad)))[0]) if self.dist.enabled else len(bad)
        if count:
            first = f" (first: {bad[0]})" if bad else ""
            raise TrainingStopped(
                f"the weights hold NaN or inf after step {self.step}{first}: training stopped without saving them. "
                f"The last good checkpoint is kept in {self.output_dir}; lower train.learning_rate or check the "
                "data, then --resume_from it.")

    def _train_step(self) -> float:
        t = self.config.train
        self.model.train()
        total = 0.0
        for micro in range(t.gradient_accumulation_steps):
            x, y = next(self.batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.dist.grad_sync(micro == t.gradient_accumulation_steps - 1):
                with self._autocast():
                    loss = self.forward(x, y) / t.gradient_accumulation_steps
                loss.backward()
            total += loss.item()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.dist.mean(total)

    @torch.no_grad()
    def evaluate(self) -> dict:
        t = self.config.train
        self.model.eval()
        total_loss, total_tokens = 0.0, 0
        # eval_batches per rank: the same windows as one process with batch_size x world_size.
        windows = self.EvalWindows(self.valid_shards, t.max_seq_length, t.batch_size,
                                   max_batches=t.eval_batches * self.dist.world_size)
        for x, y, counted in self.dist.eval_share(windows):  # this rank's batches
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                loss = self.model(x, y)
            n = y.numel() if counted else 0
            total_loss += loss.item() * n
            total_tokens += n
        total_loss, total_tokens = self.dist.sum(total_loss, total_tokens)
        val_loss = total_loss / max(total_tokens, 1)
        bytes_per_token = self.valid_shards.bytes_per_token
        result = {"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)),
                  "val_bpb": val_loss / (math.log(2) * bytes_per_token)}
        if self.dist.samples_here and t.sample_prompts and self.sampler is not None:
            # Under FSDP every rank takes part in the sample's forwards; rank 0 keeps it.
            prompt = t.sample_prompts[0]
            sample = prompt + self.sampler(self.model, self.tokenizer, prompt, t.sample_max_new_tokens)
            if self.dist.is_main:
                result["sample"] = sample
        self.model.train()
        return result

    def save(self) -> Path | None:
        """Saves checkpoint-STEP (every rank calls this); returns its path on rank 0."""
        state = {**self.state, "data": self.batches.state_dict(), "global_batch": self.effective_batch}
        return self.dist.save_checkpoint(self.output_dir, self.step, self.model, self.optimizer, state, self.config,
                                         self.model_config, self.tokenizer_path,
                                         keep=self.config.train.keep_checkpoints)

    # -- hooks a fine-tuning task overrides ------------------------------------------------------
    def _save_run_configs(self) -> None:
        self.config.save_yaml(self.output_dir / layout.TRAINING_CONFIG)
        self.model_config.save_yaml(self.output_dir / layout.MODEL_CONFIG)

    def _step_tokens(self) -> int:
        """Tokens the last optimizer step trained on."""
        return self.effective_batch * self.config.train.max_seq_length

    def _report(self, row: dict, progress) -> None:
        """Called every log_steps with the metrics row (before it is written to metrics.jsonl)."""
        if progress is not None:
            progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_sec']:,.0f}")

    def _eval_line(self, result: dict) -> str:
        return (f"step {result['step']}: val_loss {result['val_loss']:.4f}, ppl {result['val_ppl']:.1f}, "
                f"bpb {result['val_bpb']:.3f}")

    # -- helpers -----------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _early_stop(self, val_loss: float) -> bool:
        best = self.state["best_val_loss"]
        if best is None or val_loss < best:
            self.state["best_val_loss"] = val_loss
            self.state["evals_without_improvement"] = 0
            return False
        self.state["evals_without_improvement"] += 1
        patience = self.config.train.early_stopping_patience
        return patience is not None and self.state["evals_without_improvement"] >= patience

    def _say(self, progress, text: str) -> None:
        if not self.dist.is_main:
            return
        if progress is not None:
            progress.write(text)
        else:
            print(text, flush=True)

    def _progress(self):
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.train.max_steps, initial=self.step, desc="train", unit="step",
                    dynamic_ncols=True)


def check_resumable(saved: dict) -> None:
    """A checkpoint resumes only with the state the trainer saved: step and data position."""
    where = f"{saved.get('path', 'the checkpoint')}/trainer_state.json"
    if not isinstance(saved.get("step"), int) or saved["step"] < 0:
        raise CheckpointError(f"{where}: 'step' is {saved.get('step')!r}, not a step number; the file is damaged")
    if not isinstance(saved.get("data"), dict):
        raise CheckpointError(f"{where} has no 'data' (the position in the token stream), so training cannot "
                              "continue exactly where it stopped. A fused or converted model is not a training "
                              "checkpoint: start a new run from it (--model_config and fresh training) instead")
