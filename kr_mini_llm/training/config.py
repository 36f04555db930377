"""TrainingConfig: the training YAML files (configs/training*.yaml).

Read with the same C++ reader as the model config (file, line and key named in every error,
"did you mean" for misspelt keys). Two layouts load: the nested one
(`device`, `train:`, `data:`) and a flat legacy one (training keys at the top, as configs/training.yaml).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from typing import Optional

from .. import _C
from ..io.atomic import atomic_write_text
from ..model.config import ConfigError, check_config_file


@dataclass
class TrainSection:
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    effective_batch_size: Optional[int] = None  # checked against the product when given
    max_seq_length: int = 256
    learning_rate: float = 3e-4
    min_learning_rate: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    dropout: Optional[float] = None  # this run's dropout rate, over the model config's (which a saved model keeps)
    dropout_after_epochs: float = 0.0  # the dropout only after this many passes over the training tokens
    lr_schedule: str = "cosine"  # cosine | linear | wsd | constant (after warmup); keyed to steps or time (optim.py)
    decay_fraction: float = 0.2  # wsd: the last fraction of the run (steps or time) that decays to min_learning_rate
    warmup_steps: int = 100
    optimizer: str = "adamw"  # adamw | muon (Muon on the hidden matrices, AdamW on embedding, head and norms)
    muon_learning_rate: float = 0.02  # train.optimizer: muon, for the hidden matrices (same schedule)
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update (each is 3 matmuls per matrix)
    max_steps: int = 1000
    max_time_minutes: Optional[float] = None  # stop (and save) after this wall time
    max_epochs: Optional[float] = None  # stop (and save) after this many passes over the training tokens
    mixed_precision: bool = False
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32; fp16 on MPS) | bf16 | fp16
    gradient_checkpointing: bool = False
    compile_model: bool = False
    ops: str = "fused"  # fused | reference
    log_steps: int = 10
    eval_steps: int = 200
    eval_batches: int = 20
    save_steps: int = 500
    keep_checkpoints: int = 3
    early_stopping_patience: Optional[int] = None  # evals without improvement before stopping
    sample_prompts: list = field(default_factory=lambda: ["대한민국의 수도는", "오늘 날씨가"])
    sample_max_new_tokens: int = 40
    tensorboard: bool = False
    distributed: str = "auto"  # auto (ddp when WORLD_SIZE > 1) | none | ddp | fsdp
    fsdp_cpu_offload: bool = False  # FSDP2 keeps parameters, gradients and optimizer state in CPU memory (CUDA)
    fsdp_reshard_after_forward: bool = True  # False: keep gathered weights until backward (more memory, less traffic)
    collective_timeout_minutes: float = 10.0  # a rank waiting longer on the others fails, naming the collective


@dataclass
class DataSection:
    tokens: str = "data/tokens"  # binary token shards made by scripts/prepare_data.py
    train: str = "data/processed/train.txt"
    valid: str = "data/processed/valid.txt"
    tokenizer: str = "models/tokenizer.model"


@dataclass
class TrainingConfig:
    device: str = "auto"  # auto (cuda -> mps -> cpu) | cpu | cuda | cuda:N | mps
    seed: int = 1337
    output_dir: str = "checkpoints"
    mps_memory_fraction: float = 0.8
    threads: Optional[int] = None  # torch.set_num_threads on the CPU; None: torch's default
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainingConfig":
        path = check_config_file(path, "training config")
        raw = _C.check_yaml(path, _schema())
        if not raw:  # e.g. only "---": no settings, which would silently mean all defaults
            raise ConfigError(f"{path}: the training config is empty (no settings in it); give a YAML file with "
                              "the settings (see configs/ for examples)")
        return cls.from_dict(raw, where=path)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "<dict>") -> "TrainingConfig":
        raw = dict(raw)
        train = dict(raw.pop("train", None) or {})
        for key in _LEGACY:
            if key in raw:
                value = raw.pop(key)
                target = "mixed_precision" if key == "fp16" else key
                if target in train:
                    raise ConfigError(f"{where}: '{key}' is given both at the top level and under train:; keep one")
                train[target] = value  # legacy fp16: mixed precision in the device's best dtype
        data = dict(raw.pop("data", None) or {})
        _check_keys(raw, [f.name for f in fields(cls) if f.name not in ("train", "data")], where, "")
        _check_keys(train, [f.name for f in fields(TrainSection)], where, "train.")
        _check_keys(data, [f.name for f in fields(DataSection)], where, "data.")
        config = cls(**raw, train=TrainSection(**train), data=DataSection(**data))
        config.validate(where)
        return config

    def replace(self, **changes) -> "TrainingConfig":
        """A deep copy with some top-level fields changed (sections are copied, never shared)."""
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def with_overrides(self, overrides: list[str], where: str = "--set") -> "TrainingConfig":
        """Applies `key=value` strings (train.learning_rate=1e-4, device=cpu), YAML-typed."""
        raw = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"{where}: '{item}' is not key=value (e.g. train.max_steps=100)")
            key, value = item.split("=", 1)
            *parents, leaf = key.strip().split(".")
            node = raw
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"{where}: '{key}' names no section '{p}' (sections: train, data)")
                node = node[p]
            node[leaf] = value
        text = _to_yaml(raw)
        return TrainingConfig.from_dict(_C.check_yaml_string(text, _schema(), where), where)

    # -- checks and output -------------------------------------------------------------------
    def validate(self, where: str = "TrainingConfig") -> None:
        t = self.train

        def fail(msg):
            raise ConfigError(f"{where}: {msg}")

        for name in ("batch_size", "gradient_accumulation_steps", "max_seq_length", "max_steps",
                     "log_steps", "eval_steps", "eval_batches", "save_steps", "keep_checkpoints"):
            if getattr(t, name) <= 0:
                fail(f"train.{name} must be > 0, got {getattr(t, name)}")
        if t.warmup_steps < 0:
            fail(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
        if not t.learning_rate > 0:
            fail(f"train.learning_rate must be > 0, got {t.learning_rate}")
        if not 0 <= t.min_learning_rate <= t.learning_rate:
            fail(f"train.min_learning_rate must be in [0, learning_rate={t.learning_rate}], got {t.min_learning_rate}")
        if not 0 < t.decay_fraction <= 1:
            fail(f"train.decay_fraction must be in (0, 1], got {t.decay_fraction}")
        if not t.muon_learning_rate > 0:
            fail(f"train.muon_learning_rate must be > 0, got {t.muon_learning_rate}")
        if not 0 <= t.muon_momentum < 1:
            fail(f"train.muon_momentum must be in [0, 1), got {t.muon_momentum}")
        if t.dropout is not None and not 0 <= t.dropout < 1:
            fail(f"train.dropout must be in [0, 1) (or left out: the model config's), got {t.dropout}")
        if not 0 <= t.dropout_after_epochs < math.inf:
            fail(f"train.dropout_after_epochs must be a number of passes >= 0, got {t.dropout_after_epochs}")
        if t.muon_ns_steps < 1:
            fail(f"train.muon_ns_steps must be >= 1, got {t.muon_ns_steps}")
        if t.max_time_minutes is not None and not t.max_time_minutes > 0:
            fail(f"train.max_time_minutes must be > 0 (or left out), got {t.max_time_minutes}")
        if t.max_epochs is not None and not 0 < t.max_epochs < math.inf:
            fail(f"train.max_epochs must be a number of passes > 0 (or left out), got {t.max_epochs}")
        for choice, allowed in (("lr_schedule", ("cosine", "linear", "wsd", "constant")),
                                ("optimizer", ("adamw", "muon")),
                                ("precision", ("auto", "bf16", "fp16")), ("ops", ("fused", "reference")),
                                ("distributed", ("auto", "none", "ddp", "fsdp"))):
            if getattr(t, choice) not in allowed:
                fail(f"train.{choice} must be one of {', '.join(allowed)}, got '{getattr(t, choice)}'")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            fail(f"device must be auto, cpu, cuda, cuda:N or mps, got '{self.device}'")
        if not 0 < self.mps_memory_fraction <= 2:
            fail(f"mps_memory_fraction must be in (0, 2], got {self.mps_memory_fraction}")
        if not t.collective_timeout_minutes > 0:
            fail(f"train.collective_timeout_minutes must be > 0, got {t.collective_timeout_minutes}")
        if self.threads is not None and self.threads <= 0:
            fail(f"threads must be > 0, got {self.threads}")

    def check_effective_batch(self, world_size: int = 1, where: str = "TrainingConfig") -> int:
        t = self.train
        effective = t.batch_size * t.gradient_accumulation_steps * world_size
        if t.effective_batch_size is not None and t.effective_batch_size != effective:
            raise ConfigError(
                f"{where}: train.effective_batch_size is {t.effective_batch_size} but batch_size x "
                f"gradient_accumulation_steps x world_size = {t.batch_size} x {t.gradient_accumulation_steps}"
                f" x {world_size} = {effective}; fix one of them or drop effective_batch_size")
        return effective

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, _to_yaml(self.to_dict()))


# Flat keys of the legacy layout (configs/training.yaml), read as train.* (fp16 -> mixed_precision).
_LEGACY = ("batch_size", "gradient_accumulation_steps", "effective_batch_size", "max_seq_length",
           "learning_rate", "warmup_steps", "max_steps", "save_steps", "eval_steps", "fp16",
           "mixed_precision", "gradient_checkpointing", "compile_model")

_TYPES = {int: "int", float: "float", bool: "bool", str: "str", list: "list[str]"}


def _type_name(f) -> str:
    t = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 (our own annotations)
    optional = getattr(t, "__origin__", None) is not None and type(None) in getattr(t, "__args__", ())
    if optional:
        t = next(a for a in t.__args__ if a is not type(None))
    return _TYPES[t] + ("?" if optional else "")


def _schema() -> dict:
    schema = {f.name: _type_name(f) for f in fields(TrainingConfig) if f.name not in ("train", "data")}
    schema["train"] = {f.name: _type_name(f) for f in fields(TrainSection)}
    schema["data"] = {f.name: _type_name(f) for f in fields(DataSection)}
    for key in _LEGACY:
        schema[key] = "bool" if key == "fp16" else schema["train"][key]
    return schema


def _check_keys(d: dict, known: list, where: str, prefix: str) -> None:
    for key in d:
        if key not in known:
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{prefix}{guess[0]}'?)" if guess else ""
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint}")


def _to_yaml(d: dict, indent: int = 0) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
