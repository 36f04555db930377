"""Runs a sweep: an Optuna study (TPE sampling, median pruning on the intermediate validation bits
per byte) whose trials are training runs of a fixed number of minutes or steps.

The study lives in Optuna storage (SQLite in the output folder by default, any Optuna storage URL
on a cluster), tagged with the space's fingerprint: a rerun continues it, a different space is refused.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

from ..model import ConfigError, TransformerConfig
from ..training import Trainer, TrainingConfig, TrainingStopped
from ..training.optim import schedule_progress
from ..training.task import PretrainingTask
from .space import Space, SpaceError, apply

STUDY_DB = "study.db"
TRIALS_DIR = "trials"
# A trial budgeted in minutes has no step limit of its own: the time ends it.
UNLIMITED_STEPS = 10_000_000


class ReportingTask(PretrainingTask):
    """Pretraining that validates at `reports` equal fractions of the trial's budget (steps or time,
    as the schedule counts them) and hands each figure to the pruner; a trial the pruner stops
    raises optuna.TrialPruned out of the training loop."""

    def __init__(self, trial, reports: int):
        self.trial, self.reports, self.next = trial, reports, 1

    def after_step(self, run, loss: float) -> None:
        import optuna

        progress = schedule_progress(run.step + 1, run.state["elapsed_s"], run.config.train)
        if self.next >= self.reports or progress < self.next / self.reports:
            return  # the last report is the trial's final evaluation (run_trial)
        bpb = self.evaluate(run)["val_bpb"]
        self.trial.report(bpb, self.next)
        self.next += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val_bpb {bpb:.4f} at {progress:.0%} of the budget")


def trial_config(config: TrainingConfig, space: Space, output_dir: Path) -> TrainingConfig:
    """The trial's budget and bookkeeping: one evaluation at the end (the task adds the pruner's),
    one checkpoint, no early stopping (the pruner does that)."""
    import dataclasses

    steps = space.steps if space.steps is not None else UNLIMITED_STEPS
    train = dataclasses.replace(config.train, max_steps=steps, eval_steps=steps, save_steps=steps, keep_checkpoints=1,
                                early_stopping_patience=None, tensorboard=False, max_time_minutes=space.minutes,
                                max_epochs=None)
    trial = config.replace(train=train, output_dir=str(output_dir))
    trial.validate("the trial budget")
    return trial


def check_budget(space: Space, config: TrainingConfig, model_config: TransformerConfig, log=print) -> None:
    """Refuses a budget in which a trial cannot validate once: steps below trial.reports, or minutes
    shorter than one training step plus one evaluation as timed here on the base config (this also
    reads the data and tokenizer, so a missing file fails before any trial)."""
    if space.steps is not None:
        if space.steps < space.reports:
            raise SpaceError(f"{space.path}: trial.steps ({space.steps}) is fewer than trial.reports "
                             f"({space.reports}); a trial could not report that often")
        with tempfile.TemporaryDirectory() as tmp:  # reads the data now, not in trial 0
            Trainer(model_config, trial_config(config, space, Path(tmp)), show_progress=False).close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model_config, trial_config(config, space, Path(tmp) / "run"), show_progress=False)
        try:
            start = time.perf_counter()
            trainer._train_step()
            step_s = time.perf_counter() - start
            start = time.perf_counter()
            trainer.evaluate()
            eval_s = time.perf_counter() - start
        finally:
            trainer.close()
            trainer.release_lock()
    budget = 60 * space.minutes
    if budget < step_s + eval_s:
        raise SpaceError(f"{space.path}: trial.minutes {space.minutes} ({budget:.1f} s) is shorter than one training "
                         f"step and one evaluation here ({step_s:.1f} s + {eval_s:.1f} s with train.eval_batches="
                         f"{config.train.eval_batches}); give more minutes or fewer eval_batches")
    if space.reports * eval_s > budget / 2:
        log(f"note: {space.reports} evaluations of {eval_s:.1f} s take over half of each trial's {budget:.0f} s; "
            "fewer trial.reports or train.eval_batches leave more time to train")


def check_study(space: Space, storage: str, study_name: str) -> int:
    """Trials already in study `study_name` of `storage` (0 when there is none); a study made from
    another search space is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if study_name not in existing:
        return 0
    stored = existing[study_name].user_attrs.get("space_fingerprint")
    if stored != space.fingerprint:
        source = existing[study_name].user_attrs.get("space_file", "another file")
        raise SpaceError(f"{storage} holds study '{study_name}' made from another search space ({source}, "
                         f"fingerprint {stored}; {space.path} is {space.fingerprint}); continue it with that "
                         "space, or start another study (--study_name, another --output, or --overwrite)")
    return existing[study_name].n_trials


def open_study(space: Space, storage: str, study_name: str):
    """The study `study_name` in `storage`: created, or continued when it was made from this space."""
    import optuna

    done = check_study(space, storage, study_name)
    # Continued or parallel workers draw from other seeds than the first, so they do not repeat its trials.
    sampler = optuna.samplers.TPESampler(seed=space.seed + done, n_startup_trials=min(10, max(2, space.trials // 3)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    study.set_user_attr("space_fingerprint", space.fingerprint)
    study.set_user_attr("space_file", space.path)
    return study


def run_trial(trial, space: Space, config: TrainingConfig, model_config: TransformerConfig, output: Path,
              log=print) -> float:
    values = {p.key: p.suggest(trial) for p in space.params}
    where = f"trial {trial.number} ({', '.join(f'{k}={v}' for k, v in values.items())})"
    cfg, model_cfg = apply(values, config, model_config, where)
    cfg = trial_config(cfg, space, output / TRIALS_DIR / f"trial-{trial.number:04d}")
    trainer = Trainer(model_cfg, cfg, show_progress=False, overwrite=True, task=ReportingTask(trial, space.reports))
    try:
        result = trainer.train()
    finally:
        trainer.close()
    trial.report(result["val_bpb"], space.reports)
    trial.set_user_attr("steps", result["step"])
    trial.set_user_attr("val_loss", result["val_loss"])
    trial.set_user_attr("minutes", round(result["elapsed_s"] / 60, 3))
    log(f"{where}: val_bpb {result['val_bpb']:.4f} after {result['step']} steps, {result['elapsed_s'] / 60:.1f} min")
    return result["val_bpb"]


def run_sweep(space: Space, config: TrainingConfig, model_config: TransformerConfig, output: Path, storage: str,
              study_name: str, n_trials: int | None = None, log=print):
    """Runs trials until the study holds `n_trials` (default study.trials) finished ones; returns the study."""
    import optuna

    study = open_study(space, storage, study_name)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    todo = max(0, (n_trials or space.trials) - len(study.get_trials(deepcopy=False, states=finished)))
    if todo:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            # A sampled combination the configs refuse, or a diverged run, fails that trial only.
            study.optimize(lambda trial: run_trial(trial, space, config, model_config, output, log), n_trials=todo,
                           catch=(ConfigError, TrainingStopped))
    return study
