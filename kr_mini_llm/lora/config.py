"""LoRAConfig: the settings of a fine-tune, spelled as mlx-lm spells them.

The same keys come from the command line (`--learning-rate`) or a YAML file given with
`-c config.yaml` (`learning_rate:`); a flag given on the command line wins over the file, the
file over the defaults. The file is read by the shared C++ reader (`_C.check_yaml`), so an
unknown key, a wrong type or bad YAML fails with the file, the line and the key named. Rank,
scale, dropout and keys may be given flat (`lora_rank: 8`) or as mlx-lm's
`lora_parameters: {rank: 8, scale: 20.0, dropout: 0.0, keys: [self_attn.q_proj, ...]}`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Optional

from .. import _C
from ..model.config import ConfigError, check_config_file
from .apply import DEFAULT_KEYS, LoRAError, LoRAParameters

DEFAULT_NUM_LAYERS = 16
OPTIMIZERS = ("adam", "adamw", "sgd")
FINE_TUNE_TYPES = ("lora", "dora", "full")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class LoRAConfig:
    model: Optional[str] = None               # our checkpoint/output directory or a HF Llama/Qwen3 directory
    train: bool = False
    test: bool = False
    data: str = "data"                        # train.jsonl, valid.jsonl (test.jsonl for --test)
    fine_tune_type: str = "lora"              # lora | dora (adapters) | full (every weight)
    optimizer: str = "adam"                   # adam | adamw | sgd
    mask_prompt: bool = False
    num_layers: Optional[int] = None          # adapters on the last N blocks; -1 for all; None: 16 (all when fewer)
    batch_size: int = 4
    iters: int = 1000
    val_batches: int = 25                     # -1: the whole validation set
    learning_rate: float = 1e-5
    steps_per_report: int = 10
    steps_per_eval: int = 200
    resume_adapter_file: Optional[str] = None
    adapter_path: str = "adapters"
    save_every: int = 100
    test_batches: int = 500                   # -1: the whole test set
    max_seq_length: Optional[int] = None      # default: the model's context length
    grad_checkpoint: bool = False
    grad_accumulation_steps: int = 1
    seed: int = 0
    lr_schedule: str = "constant"             # constant | cosine | linear (after warmup)
    warmup_steps: int = 0
    weight_decay: float = 0.01                # adamw only
    device: str = "auto"                      # auto (cuda -> mps -> cpu) | cpu | cuda | cuda:N | mps
    tokenizer: Optional[str] = None           # when --model holds no tokenizer.model
    threads: Optional[int] = None             # torch.set_num_threads on the CPU
    lora_parameters: LoRAParameters = field(default_factory=LoRAParameters)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> dict:
        """The file's keys as a dict (checked against the schema; flat lora_* keys folded into
        lora_parameters). Merge it with `merged`."""
        path = check_config_file(path, "LoRA config")
        raw = _C.check_yaml(path, _schema(cls))
        lp = dict(raw.pop("lora_parameters", None) or {})
        for flat in ("rank", "scale", "dropout", "keys"):
            if f"lora_{flat}" in raw:
                if flat in lp:
                    raise ConfigError(f"{path}: both lora_{flat} and lora_parameters.{flat} are given; keep one")
                lp[flat] = raw.pop(f"lora_{flat}")
        if lp:
            raw["lora_parameters"] = lp
        return raw

    @classmethod
    def merged(cls, *layers: dict, where: str = "config") -> "LoRAConfig":
        """Later layers win; None values are skipped (an unset flag)."""
        values, lp = {}, {}
        for layer in layers:
            for key, value in layer.items():
                if value is None:
                    continue
                if key == "lora_parameters":
                    lp.update({k: v for k, v in value.items() if v is not None})
                else:
                    values[key] = value
        try:
            params = LoRAParameters(**{"keys": list(DEFAULT_KEYS), **lp})
        except LoRAError as e:
            raise ConfigError(f"{where}: {e}") from None
        config = cls(**values, lora_parameters=params)
        config.validate(where)
        return config

    def validate(self, where: str = "config") -> None:
        def fail(msg):
            raise ConfigError(f"{where}: {msg}")

        for name in ("batch_size", "iters", "learning_rate", "steps_per_report", "steps_per_eval", "save_every",
                     "grad_accumulation_steps"):
            if not getattr(self, name) > 0:
                fail(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("val_batches", "test_batches"):
            v = getattr(self, name)
            if v == 0 or v < -1:
                fail(f"{name} must be a positive number of batches or -1 for all, got {v}")
        if self.num_layers is not None and (self.num_layers == 0 or self.num_layers < -1):
            fail(f"num_layers must be a positive number of blocks or -1 for all, got {self.num_layers}")
        if self.max_seq_length is not None and self.max_seq_length <= 1:
            fail(f"max_seq_length must be > 1, got {self.max_seq_length}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            fail("warmup_steps and weight_decay must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            fail(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")
        if self.lr_schedule not in SCHEDULES:
            fail(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got '{self.lr_schedule}'")
        if self.fine_tune_type not in FINE_TUNE_TYPES:
            fail(f"fine_tune_type must be one of {', '.join(FINE_TUNE_TYPES)}, got '{self.fine_tune_type}'")
        if self.threads is not None and self.threads <= 0:
            fail(f"threads must be > 0, got {self.threads}")
        if not self.model:
            fail("--model is required (a checkpoint or output directory of scripts/train.py, or a HF "
                 "Llama/Qwen3 directory)")
        if not (self.train or self.test):
            fail("nothing to do: pass --train (fine-tune) and/or --test (evaluate on test.jsonl)")

    def layers_for(self, depth: int) -> int:
        """The number of blocks to adapt in a `depth`-block model: num_layers when given, else mlx-lm's 16,
        or every block of a model that has fewer."""
        return self.num_layers if self.num_layers is not None else min(DEFAULT_NUM_LAYERS, depth)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_config(self, max_seq_length: int):
        """The TrainingConfig the shared trainer loop runs with (max_seq_length resolved)."""
        from ..training.config import TrainingConfig

        return TrainingConfig.from_dict({
            "device": self.device, "seed": self.seed, "output_dir": self.adapter_path, "threads": self.threads,
            "train": {
                "batch_size": self.batch_size, "gradient_accumulation_steps": self.grad_accumulation_steps,
                "max_seq_length": max_seq_length, "learning_rate": self.learning_rate,
                "min_learning_rate": self.learning_rate if self.lr_schedule == "constant" else 0.0,
                "lr_schedule": self.lr_schedule, "warmup_steps": self.warmup_steps, "max_steps": self.iters,
                "max_grad_norm": 0.0, "gradient_checkpointing": self.grad_checkpoint,
                "log_steps": self.steps_per_report, "eval_steps": self.steps_per_eval,
                "eval_batches": max(self.val_batches, 1), "save_steps": self.save_every, "sample_prompts": [],
                "weight_decay": self.weight_decay,
            },
        }, where="LoRAConfig")


_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


def _schema(cls=LoRAConfig) -> dict:
    schema = {}
    for f in fields(cls):
        if f.name == "lora_parameters":
            continue
        t = eval(f.type, globals()) if isinstance(f.type, str) else f.type  # noqa: S307 (our annotations)
        optional = type(None) in getattr(t, "__args__", ())
        base = next(a for a in t.__args__ if a is not type(None)) if optional else t
        schema[f.name] = _TYPES[base] + ("?" if optional else "")
    schema["lora_parameters"] = {"rank": "int", "scale": "float", "dropout": "float", "keys": "list[str]"}
    schema.update(lora_rank="int", lora_scale="float", lora_dropout="float", lora_keys="list[str]")
    return schema
