"""DPOConfig: LoRAConfig's settings (model, data, schedule, adapters or full, checkpoints) plus DPO's own."""
from __future__ import annotations

from dataclasses import dataclass

from ..model.config import ConfigError
from ..lora.config import LoRAConfig


@dataclass
class DPOConfig(LoRAConfig):
    beta: float = 0.1                          # strength of the pull towards the reference (TRL's default)
    precompute_ref_log_probs: bool = False     # reference log-probs once before training; no reference copy kept
    adapter_path: str = "dpo"
    learning_rate: float = 5e-6

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        if not self.beta > 0:
            raise ConfigError(f"{where}: beta must be > 0, got {self.beta} (TRL's default is 0.1)")
