"""Everything that knows about ranks. The rest of the trainer calls these and stays rank-agnostic.

Single process today: rank 0 of 1. torchrun support (DDP/FSDP2, DCP checkpoints) plugs in here.
"""
from __future__ import annotations

import os

import torch


class DistributedContext:
    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.world_size > 1:
            raise RuntimeError(
                f"WORLD_SIZE={self.world_size}: multi-process training (torchrun) is not available in this "
                "version of kr-mini-llm yet; run scripts/train.py as a single process.")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        """Mean of a scalar over ranks."""
        return value

    def barrier(self) -> None:
        pass

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def close(self) -> None:
        pass
