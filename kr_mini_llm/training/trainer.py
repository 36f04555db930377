"""The training loop, for one process or many (torchrun; everything about ranks is in distributed.py).

    trainer = Trainer(model_config, train_config, output_dir="checkpoints/tiny")
    trainer.train()               # or Trainer(..., resume_from="checkpoints/tiny")

What is trained (data, model, optimizer groups, resume, evaluate, save) is the task's (task.py):
pretraining by default; overfit.py and lora/trainer.py pass their own.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
import weakref
from pathlib import Path

import torch

from ..device import apply_memory_limit, pick_device, precision_choice
from .. import host_memory
from ..io import layout
from ..io.atomic import remove_directory
from ..model import TransformerConfig
from ..model.config import ConfigError
from ..checkpoint import list_checkpoints, nonfinite_parameters
from .config import TrainingConfig
from .distributed import DistributedContext
from .memory_advice import warn_if_short_of_memory
from .metrics import MetricsLog, plot_loss_curve
from .optim import run_max_steps, dropout_at, lr_factor, set_learning_rates
from .run_lock import RunLock
from .task import PretrainingTask, RunContext, TrainingTask


class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss or non-finite weights; the last good checkpoint is kept."""


# The signals that end a run with a save: Ctrl-C, and what Slurm, Kubernetes and `timeout` send.
STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Trainer:
    def __init__(self, model_config: TransformerConfig, config: TrainingConfig, output_dir: str | Path | None = None,
                 resume_from: str | Path | None = None, show_progress: bool = True, overwrite: bool = False,
                 sampler=None, task: TrainingTask | None = None, clock=None):
        self.task = task if task is not None else PretrainingTask()
        # Wall-clock seconds (time.time): the time limit and the time-keyed schedule read it; tests
        # pass a simulated one (a slower CPU, a run that lasts hours).
        self.clock = clock if clock is not None else time.time
        self.config = config
        self.model_config = model_config
        # sampler(model, tokenizer, prompt, max_new_tokens) -> text, for the samples at each eval
        # (scripts/train.py passes the Generator's; training does not depend on inference).
        self.sampler = sampler
        self.progress = None  # the progress bar while train() runs (tasks write their lines above it)
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

    def close(self) -> None:
        """Ends this process's part in a distributed run: the training wrapper is dropped, then the
        process group this trainer made is left (DistributedContext.close says why in that order)."""
        self.forward = getattr(self, "model", None)
        self.dist.close()

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
        # bf16 on a CPU only where it is native and measures faster; train.precision forces a dtype.
        # Timed on rank 0 (after the thread count is set) and handed to every rank: ranks that timed
        # for themselves could disagree, and FSDP2 cannot gather parameters of two dtypes. LoRA runs this too.
        self.amp_dtype, self.precision_reason = self.dist.from_main(
            precision_choice(self.device, t.mixed_precision, t.precision) if self.dist.is_main else None)
        host_memory.for_training(self.device, self.amp_dtype)  # bf16 CPU steps reuse what the last one freed
        if self.task.check_memory:
            warn_if_short_of_memory(model_config, config, self.device, self.dist.is_main)
        self.context = RunContext(config, model_config, self.device, self.dist, self.amp_dtype, self.output_dir)
        built = self.task.build(self.context)
        # The loop and the tasks' other methods read what was built as the run's attributes.
        self.model, self.forward, self.optimizer = built.model, built.forward, built.optimizer
        self.batches, self.tokenizer, self.tokenizer_path = built.batches, built.tokenizer, built.tokenizer_path
        self._last_batch = None  # the last micro-batch trained on (_probe_loss)
        self._train_tokens = self.task.train_tokens(self)
        if t.dropout_after_epochs > 0 and not self._train_tokens:
            raise ConfigError("train.dropout_after_epochs counts passes over the training tokens, which this run "
                              "does not know (pretraining runs do); leave it at 0")
        if t.dropout_after_epochs > 0 and dropout_at(t, self.context.model_config.dropout, math.inf) == 0:
            self.say("train.dropout_after_epochs is set but the dropout rate (train.dropout, else the model "
                     "config's) is 0: no dropout will start")
        self._budget()  # a bad train.max_epochs fails here, before anything is written
        self.state = {"tokens_seen": 0, "best_val_loss": None, "evals_without_improvement": 0, "elapsed_s": 0.0}
        self.step = 0
        if resume_from is not None:
            self.task.resume(self, resume_from)
        if t.compile_model:
            self.forward = torch.compile(self.forward)

    # -- the loop --------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> dict:
        """Trains to train.max_steps or train.max_epochs (or until a time limit, early stop, Ctrl-C, or
        `stop_after` steps of this run), saving checkpoints on the way and at the end; returns the
        final metrics."""
        t = self.config.train
        self._budget()
        first_step = self.step
        with self.dist.agree(f"locking {self.output_dir}"):
            if self._lock is not None:
                self._lock.acquire()  # again, for a second train() on this object
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.task.save_run_configs(self)
        # Resumed: the log keeps the rows up to the resumed step (a crash may have logged beyond it).
        log = MetricsLog(self.output_dir, t.tensorboard, resume_step=self.step) if self.dist.is_main else None
        progress = self.progress = self._progress()
        self.task.start(self)
        received = {"signal": None}
        old_handlers = self._catch_stop_signals(received)
        start = self.clock() - self.state["elapsed_s"]
        last_log, last_step, last_tokens = self.clock(), self.step, self.state["tokens_seen"]
        reason = "max_steps" if self.max_steps == t.max_steps else "max_epochs"
        result = {}
        try:
            while self.step < self.max_steps:
                # Keyed to steps (or passes) or to time, whichever budget ends the run first (optim.py).
                factor = lr_factor(self.step, self.schedule, self.clock() - start)
                set_learning_rates(self.optimizer, t, factor)
                lr = t.learning_rate * factor
                if t.dropout_after_epochs > 0 or t.dropout is not None:
                    passes = self.state["tokens_seen"] / self._train_tokens if self._train_tokens else math.inf
                    self.model.set_dropout(dropout_at(t, self.context.model_config.dropout, passes))
                loss = self._train_step()
                self.task.after_step(self, loss)
                if not math.isfinite(loss):
                    raise TrainingStopped(
                        f"loss is {loss} at step {self.step + 1}: training stopped. The last good checkpoint is "
                        f"kept in {self.output_dir}; lower train.learning_rate or check the data, then "
                        "--resume_from it.")
                self.step += 1
                self.state["tokens_seen"] += self.task.step_tokens(self)
                self.state["elapsed_s"] = self.clock() - start
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if self.step % t.log_steps == 0 or self.step == 1:
                    now = self.clock()
                    seconds = max(now - last_log, 1e-9)
                    tps = (self.state["tokens_seen"] - last_tokens) / seconds
                    row = {"step": self.step, "loss": loss, "lr": lr, "tokens_per_sec": tps,
                           "it_per_sec": (self.step - last_step) / seconds,
                           "tokens_seen": self.state["tokens_seen"], "elapsed_s": round(self.state["elapsed_s"], 2)}
                    last_log, last_step, last_tokens = now, self.step, self.state["tokens_seen"]
                    self.task.report(self, row, progress)
                    if log:
                        log.log(row)
                stop = None
                if self.step % t.eval_steps == 0 or self.step == self.max_steps:
                    result = self.evaluate()
                    if log:
                        log.log({"step": self.step, **result})
                    self.say(self.task.eval_line(result))
                    if result.get("sample"):
                        self.say(f"  sample: {result['sample']!r}")
                    if self._early_stop(result["val_loss"]):
                        stop = "early_stopping"
                if t.max_time_minutes is not None and self.state["elapsed_s"] >= 60 * t.max_time_minutes:
                    stop = "max_time"
                # Every rank stops at the same step, whichever got the signal.
                if self.dist.any(received["signal"] is not None):
                    stop = STOP_SIGNALS.get(received["signal"], "interrupted")
                if stop_after is not None and self.step - first_step >= stop_after:
                    stop = "stop_after"
                if self.step % t.save_steps == 0 or stop or self.step == self.max_steps:
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
            self.progress = None
            if log:
                log.close()
            self.release_lock()
        return {"step": self.step, "stop_reason": reason, "loss_curve": str(curve) if curve else None,
                "tokens_seen": self.state["tokens_seen"], "elapsed_s": self.state["elapsed_s"], **result}

    def _budget(self) -> None:
        """max_steps, or the steps of train.max_epochs passes if fewer; the schedule is keyed to it."""
        t = self.config.train
        self.max_steps = t.max_steps
        if t.max_epochs is not None:
            self.max_steps = run_max_steps(t, self._train_tokens, self.task.step_tokens(self))
            if self.max_steps <= t.warmup_steps:  # the run would end still warming up, never annealed
                raise ConfigError(f"train.max_epochs={t.max_epochs:g} passes end the run at step {self.max_steps}, "
                                  f"within its train.warmup_steps={t.warmup_steps}; raise max_epochs or lower "
                                  "warmup_steps")
        self.schedule = dataclasses.replace(t, max_steps=self.max_steps)

    def _catch_stop_signals(self, received: dict) -> dict:
        """SIGINT and SIGTERM set `received` (the loop then saves and stops); a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only

        def on_signal(signum, frame):
            if received["signal"] is not None:
                raise KeyboardInterrupt
            received["signal"] = signum
            self.say(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                     "(send it again to stop at once, without saving)")

        return {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    def _check_weights_finite(self) -> None:
        """A save never keeps weights that the last optimizer step made NaN or inf, nor finite weights
        so large that they already give a non-finite loss (a diverged step, e.g. learning_rate 1000):
        resuming from such a checkpoint would fail at once."""
        bad = nonfinite_parameters(self.model)
        if self.dist.any(bool(bad)):
            first = f" (first: {bad[0]})" if bad else ""
            self._stop_without_saving(f"the weights hold NaN or inf after step {self.step}{first}")
        probe = self._probe_loss()
        if self.dist.any(not math.isfinite(probe)):
            self._stop_without_saving(f"the weights after step {self.step} give a loss of {probe} on the step's "
                                      "last batch")

    def _probe_loss(self) -> float:
        """The loss of the updated weights on the last micro-batch trained on: one forward, no
        gradients, eval mode (no dropout, so the RNG stream, and with it a resumed run, is unchanged)."""
        if self._last_batch is None:
            return 0.0
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                return float(self.task.loss(self, self._last_batch))
        finally:
            self.model.train()

    def _stop_without_saving(self, what: str) -> None:
        raise TrainingStopped(
            f"{what}: training stopped without saving them. The last good checkpoint is kept in "
            f"{self.output_dir}; lower train.learning_rate or check the data, then --resume_from it.")

    def _train_step(self) -> float:
        t = self.config.train
        self.model.train()
        total = 0.0
        for micro in range(t.gradient_accumulation_steps):
            batch = self._last_batch = next(self.batches)
            with self.dist.grad_sync(micro == t.gradient_accumulation_steps - 1):
                with self.autocast():
                    loss = self.task.loss(self, batch) / t.gradient_accumulation_steps
                loss.backward()
            total += loss.item()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.dist.mean(total)

    def evaluate(self) -> dict:
        return self.task.evaluate(self)

    def save(self) -> Path | None:
        """Saves the task's checkpoint at this step (every rank calls this); its path on rank 0."""
        return self.task.save(self)

    # -- helpers -----------------------------------------------------------------------------------
    def autocast(self):
        """The run's autocast (a no-op in full precision), for the tasks' forwards."""
        return self.context.autocast()

    def _early_stop(self, val_loss: float) -> bool:
        best = self.state["best_val_loss"]
        if best is None or val_loss < best:
            self.state["best_val_loss"] = val_loss
            self.state["evals_without_improvement"] = 0
            return False
        self.state["evals_without_improvement"] += 1
        patience = self.config.train.early_stopping_patience
        return patience is not None and self.state["evals_without_improvement"] >= patience

    def say(self, text: str) -> None:
        """Prints a line on rank 0, above the progress bar while train() runs."""
        if not self.dist.is_main:
            return
        if self.progress is not None:
            self.progress.write(text)
        else:
            print(text, flush=True)

    def _progress(self):
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_steps, initial=self.step, desc="train", unit="step",
                    dynamic_ncols=True)

