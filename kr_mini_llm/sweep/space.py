"""The search space of a sweep: a YAML file, checked in full before any trial runs.

    trial:                       # each trial's budget: minutes (wall clock) or steps
      minutes: 2
      reports: 4                 # validations per trial that the pruner sees (at equal fractions of it)
    study:
      trials: 20
      seed: 0
    params:                      # any training --set key, or model.KEY of the model config
      train.learning_rate: {low: 3.0e-4, high: 3.0e-3, log: true}
      train.warmup_steps: {low: 0, high: 200}
      train.optimizer: {choices: [adamw, muon]}
      model.qk_norm: {choices: [true, false]}

A key's type is its config field's: float and int fields take low/high (log: true for a log
scale, step for a grid), any field takes choices.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import KrMiniLlmError
from ..model import ConfigError, TransformerConfig
from ..training import TrainingConfig


class SpaceError(KrMiniLlmError, ValueError):
    """A search space that cannot run: named with the file and the key."""


@dataclass
class Param:
    key: str                      # train.learning_rate, seed, model.qk_norm
    kind: str                     # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Space:
    path: str
    params: list[Param]
    minutes: float | None = None
    steps: int | None = None
    reports: int = 4
    trials: int = 20
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        """Identifies the space and the trial budget: a study holds trials of one space only."""
        what = {"params": [vars(p) for p in self.params], "minutes": self.minutes, "steps": self.steps}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _field_types() -> dict:
    """Every key the space may name, with its current (default) value's type."""
    types = {}
    raw = TrainingConfig().to_dict()
    for key, value in raw.items():
        if isinstance(value, dict):
            types.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            types[key] = value
    types.update({f"model.{k}": v for k, v in TransformerConfig().to_dict().items()})
    return types


def load_space(path: str | Path) -> Space:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search space file") from None
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: a search space is a mapping with trial:, study: and params:")

    def fail(msg):
        raise SpaceError(f"{path}: {msg}")

    unknown = set(raw) - {"trial", "study", "params"}
    if unknown:
        fail(f"unknown section(s) {sorted(unknown)}; the sections are trial, study, params")
    trial, study, params = raw.get("trial") or {}, raw.get("study") or {}, raw.get("params") or {}
    for name, section, keys in (("trial", trial, {"minutes", "steps", "reports"}), ("study", study, {"trials", "seed"})):
        if not isinstance(section, dict) or set(section) - keys:
            fail(f"{name}: takes {', '.join(sorted(keys))}; got {section!r}")
    minutes, steps = trial.get("minutes"), trial.get("steps")
    if (minutes is None) == (steps is None):
        fail("trial: give exactly one of minutes (wall clock per trial) or steps")
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes > 0):
        fail(f"trial.minutes must be a number > 0, got {minutes!r}")
    if steps is not None and not (isinstance(steps, int) and steps > 0):
        fail(f"trial.steps must be an integer > 0, got {steps!r}")
    reports = trial.get("reports", 4)
    if not (isinstance(reports, int) and reports >= 1):
        fail(f"trial.reports must be an integer >= 1, got {reports!r}")
    trials, seed = study.get("trials", 20), study.get("seed", 0)
    if not (isinstance(trials, int) and trials >= 1):
        fail(f"study.trials must be an integer >= 1, got {trials!r}")
    if not isinstance(params, dict) or not params:
        fail("params: name at least one key to search, e.g. train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}")
    types = _field_types()
    budget_keys = {"train.max_steps", "train.max_time_minutes", "train.max_epochs"}
    out = []
    for key, spec in params.items():
        if key in budget_keys:
            fail(f"params.{key}: the trial budget is trial.minutes / trial.steps, not a searched key")
        if key not in types:
            import difflib

            guess = difflib.get_close_matches(key, list(types), n=1)
            fail(f"params: unknown key '{key}'" + (f" (did you mean '{guess[0]}'?)" if guess else "") +
                 "; keys are training config keys (train.learning_rate, seed) or model.KEY")
        out.append(_param(key, spec, types[key], fail))
    return Space(str(path), out, minutes=minutes, steps=steps, reports=reports, trials=trials, seed=seed)


def _param(key, spec, default, fail) -> Param:
    if not isinstance(spec, dict):
        fail(f"params.{key}: give {{low, high}} or {{choices: [...]}}, got {spec!r}")
    extra = set(spec) - {"low", "high", "log", "step", "choices"}
    if extra:
        fail(f"params.{key}: unknown field(s) {sorted(extra)}; fields are low, high, log, step, choices")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            fail(f"params.{key}: choices goes alone (no low/high/log/step)")
        if not isinstance(choices, list) or not choices:
            fail(f"params.{key}: choices must be a non-empty list")
        if any(not isinstance(c, (str, int, float, bool, type(None))) for c in choices):
            fail(f"params.{key}: choices must be plain values (strings, numbers, booleans)")
        return Param(key, "categorical", choices=choices)
    if "low" not in spec or "high" not in spec:
        fail(f"params.{key}: a range needs both low and high (or give choices)")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if isinstance(default, bool) or isinstance(default, str) or isinstance(default, list):
        fail(f"params.{key} is a {type(default).__name__} setting: give choices, not a range")
    # An optional setting (default None) is an integer range when both ends are integers; the
    # configs' own type check (check_against) refuses a mismatch.
    is_int = isinstance(default, int) or (default is None and isinstance(low, int) and isinstance(high, int))
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"params.{key}.{name} must be a number, got {v!r}")
        if is_int and not float(v).is_integer():
            fail(f"params.{key} is an integer setting; {name} {v} is not an integer")
    if not low < high:
        fail(f"params.{key}: the range is empty or reversed (low {low} >= high {high})")
    if log and low <= 0:
        fail(f"params.{key}: a log range needs low > 0, got {low}")
    if step is not None and (log or not (isinstance(step, (int, float)) and 0 < step <= high - low)):
        fail(f"params.{key}: step must be > 0 and at most high - low, without log")
    return Param(key, "int" if is_int else "float", low=low, high=high, log=log, step=step)


def apply(params: dict, config: TrainingConfig, model_config: TransformerConfig, where: str):
    """(training config, model config) with a trial's values; a value the configs refuse is a
    ConfigError naming `where`."""
    train_sets = [f"{k}={_yaml_value(v)}" for k, v in params.items() if not k.startswith("model.")]
    model_changes = {k[len("model."):]: v for k, v in params.items() if k.startswith("model.")}
    if train_sets:
        config = config.with_overrides(train_sets, where=where)
    if model_changes:
        try:
            model_config = model_config.replace(**model_changes)
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    return config, model_config


def _yaml_value(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def check_against(space: Space, config: TrainingConfig, model_config: TransformerConfig) -> None:
    """Each range end and each choice, applied alone to the base configs, must be accepted: an
    impossible value (a min_learning_rate above learning_rate, heads that do not divide) fails now,
    not in trial 17."""
    for p in space.params:
        values = p.choices if p.kind == "categorical" else [p.low, p.high]
        for v in values:
            v = int(v) if p.kind == "int" else v
            try:
                apply({p.key: v}, config, model_config, where=f"{space.path}: params.{p.key}={v!r}")
            except ConfigError as e:
                raise SpaceError(str(e)) from None
