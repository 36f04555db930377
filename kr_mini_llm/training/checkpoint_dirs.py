"""Which checkpoint a path means: a checkpoint directory, or an output directory's latest complete one."""
from __future__ import annotations

import os
from pathlib import Path

from . import integrity
from ..io.layout import MODEL_WEIGHTS, TRAINER_STATE, checkpoint_step, is_sharded_checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, damaged or does not fit the model."""


def is_complete(ckpt: Path) -> bool:
    """trainer_state.json, the weights (single file or DCP shards) and every file checksums.json lists."""
    return ((ckpt / TRAINER_STATE).is_file()
            and ((ckpt / MODEL_WEIGHTS).is_file() or is_sharded_checkpoint(ckpt))
            and integrity.listed_files_present(ckpt))


def numbered_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint-STEP directory, complete or not, by step."""
    if not output_dir.is_dir():
        return []
    return sorted((step, p) for p in output_dir.iterdir()
                  if (step := checkpoint_step(p.name)) is not None and p.is_dir())


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in output_dir, oldest first (a directory that lost files is not one)."""
    return [p for _, p in numbered_checkpoints(Path(output_dir)) if is_complete(p)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or the latest checkpoint inside an output directory."""
    p = Path(path)
    if (p / TRAINER_STATE).exists():
        return p
    found = list_checkpoints(p)
    if not found:
        raise CheckpointError(f"{p}: no checkpoint here (expected a checkpoint-STEP directory or an output "
                              "directory that contains them)")
    return found[-1]
