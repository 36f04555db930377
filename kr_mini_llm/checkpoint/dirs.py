"""Which checkpoint a path means: a checkpoint directory, or an output directory's latest complete one."""
from __future__ import annotations

import os
from pathlib import Path

from . import integrity
from ..errors import KrMiniLlmError
from ..io.layout import INFERENCE_INFO, MODEL_WEIGHTS, TRAINER_STATE, checkpoint_step, is_sharded_checkpoint


class CheckpointError(KrMiniLlmError, RuntimeError):
    """A checkpoint is missing, incomplete, damaged or does not fit the model."""


class NoCheckpointError(CheckpointError):
    """A path holds no complete checkpoint (nothing, only incomplete ones, or packed inference weights):
    the message says what it holds instead. Loaders that accept other directories reword it."""


def missing_parts(ckpt: Path) -> list[str]:
    """What a checkpoint directory lacks: trainer_state.json, the weights (single file or DCP shards),
    files checksums.json lists. A file that is there but damaged is not missing: loading names it."""
    missing = [] if (ckpt / TRAINER_STATE).is_file() else [TRAINER_STATE]
    if not ((ckpt / MODEL_WEIGHTS).is_file() or is_sharded_checkpoint(ckpt)):
        missing.append(MODEL_WEIGHTS)
    return missing + [n for n in integrity.listed_files_missing(ckpt) if n not in missing]


def is_complete(ckpt: Path) -> bool:
    return not missing_parts(ckpt)


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
    if (p / INFERENCE_INFO).is_file():
        raise NoCheckpointError(f"{p} holds packed inference weights (scripts/quantize.py), which only generation "
                              "loads; give the checkpoint they were made from (the 'source' in "
                              f"{p / INFERENCE_INFO})")
    found = list_checkpoints(p)
    if not found:
        numbered = numbered_checkpoints(p)
        if numbered:
            latest = numbered[-1][1]
            raise NoCheckpointError(f"{p}: no complete checkpoint here; the latest, {latest.name}, lacks "
                                  f"{', '.join(missing_parts(latest))}")
        raise NoCheckpointError(f"{p}: no checkpoint here (expected a checkpoint-STEP directory or an output "
                              "directory that contains them)")
    return found[-1]
