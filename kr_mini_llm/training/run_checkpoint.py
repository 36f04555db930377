"""A training run's checkpoint: the model that checkpoint/ stores, plus what resuming the run needs.

checkpoint-STEP/
  model.safetensors  optimizer.pt    weights and optimizer state (checkpoint/store.py), or
  dcp/                               their DCP shards in an FSDP run (checkpoint/sharded.py)
  rng.pt                             RNG states (tensors and numbers only; loaded with weights_only)
  trainer_state.json                 step, tokens seen, best validation loss, data position, ...
  config.yaml  model_config.yaml     training and model config
  tokenizer.model                    the tokenizer the model was trained with (when known)
  checksums.json                     (checkpoint/integrity.py)

DistributedContext.save_checkpoint picks the writer once: save_checkpoint (one process writes the
single files) or save_sharded_checkpoint (every rank writes its DCP shards). Both hand
checkpoint.store.write_checkpoint the files to write; nothing in checkpoint/ calls back here.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from ..checkpoint import (CheckpointError, checkpoint_size, integrity, load_pickled, load_weights, resolve_checkpoint,
                          write_checkpoint, write_weights)
from ..checkpoint.sharded import load_sharded, save_shards
from ..io import layout
from ..io.layout import SHARDED_DIR, is_sharded_checkpoint

__all__ = ["consolidate_checkpoint", "load_checkpoint", "rng_state", "save_checkpoint", "save_sharded_checkpoint",
           "set_rng_state"]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- saving -------------------------------------------------------------------------------------
def save_checkpoint(output_dir: str | os.PathLike, step: int, model, optimizer, trainer_state: dict,
                    train_config, model_config, tokenizer_path: str | None = None,
                    keep: int | None = None) -> Path:
    """checkpoint-STEP with the single-file weights, written by one process. A failed save (disk
    full, a write limit) removes its staging directory and raises CheckpointError saying why; the
    checkpoints saved before are untouched."""
    def write(staging: Path) -> None:
        write_weights(staging, model, optimizer)
        _write_run_files(staging, step, trainer_state, train_config, model_config, tokenizer_path)

    return write_checkpoint(output_dir, step, write, keep=keep,
                            size=lambda: checkpoint_size(model, optimizer, tokenizer_path))


def save_sharded_checkpoint(output_dir, step, model, optimizer, trainer_state, train_config, model_config,
                            tokenizer_path=None, keep=None, *, is_main: bool, barrier) -> Path | None:
    """FSDP's save, called on every rank: rank 0 makes the staging directory; after `barrier()`
    every rank writes its DCP shards into it; rank 0 adds the small files and renames it into place.
    Path on rank 0, else None."""
    def write(staging: Path) -> None:
        barrier()  # the staging directory exists: the other ranks write their shards now
        save_shards(model, optimizer, staging / SHARDED_DIR)
        _write_run_files(staging, step, trainer_state, train_config, model_config, tokenizer_path)

    if is_main:
        path = write_checkpoint(output_dir, step, write, keep=keep,
                                size=lambda: checkpoint_size(model, optimizer, tokenizer_path))
    else:
        barrier()
        save_shards(model, optimizer, layout.staging_dir(output_dir, step) / SHARDED_DIR)
        path = None
    barrier()  # nobody moves on (or saves again) before checkpoint-STEP exists
    return path


def _write_run_files(staging: Path, step: int, trainer_state: dict, train_config, model_config,
                     tokenizer_path: str | None) -> None:
    torch.save(rng_state(), staging / layout.RNG_STATE)
    (staging / layout.TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    train_config.save_yaml(staging / layout.TRAINING_CONFIG)
    model_config.save_yaml(staging / layout.MODEL_CONFIG)
    if tokenizer_path and Path(tokenizer_path).exists():
        shutil.copyfile(tokenizer_path, staging / layout.TOKENIZER)


# -- loading ------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, model, optimizer=None) -> dict:
    """Loads weights (and optimizer and RNG state when an optimizer is given); returns trainer_state
    with "path" added. Every file is checked against checksums.json first, and the weights must be
    finite (checkpoint.load_weights)."""
    state = load_weights(path, model, optimizer)
    if optimizer is not None:
        ckpt = Path(state["path"])
        rng = load_pickled(ckpt / layout.RNG_STATE, "RNG state")
        try:
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt}/rng.pt does not hold the RNG states this trainer saves "
                                  f"({type(e).__name__}: {e}); the checkpoint is damaged") from None
    return state


# -- consolidation ------------------------------------------------------------------------------
def consolidate_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Adds model.safetensors + optimizer.pt, gathered from the DCP shards, to a sharded checkpoint
    (in place), or writes an ordinary checkpoint without the shards to `output`. One process, CPU,
    memory for the whole model and optimizer (built as the run's training config builds it).
    Returns the checkpoint written."""
    from safetensors.torch import save_model

    from ..io.atomic import atomic_write, staged_directory
    from ..io.outputs import OutputError, claim_output
    from ..model import Transformer, TransformerConfig
    from .config import TrainingConfig
    from .optim import build_optimizer

    ckpt = resolve_checkpoint(path)
    if not is_sharded_checkpoint(ckpt):
        raise CheckpointError(f"{ckpt} has no {SHARDED_DIR}/ shards: it already is an ordinary checkpoint")
    try:
        integrity.verify(ckpt)
    except integrity.IntegrityError as e:
        raise CheckpointError(str(e)) from None
    model = Transformer(TransformerConfig.from_yaml(ckpt / layout.MODEL_CONFIG))
    optimizer = build_optimizer(model, TrainingConfig.from_yaml(ckpt / layout.TRAINING_CONFIG).train,
                                torch.device("cpu"))
    load_sharded(ckpt, model, optimizer)
    writers = ((layout.OPTIMIZER_STATE, lambda p: torch.save(optimizer.state_dict(), p)),
               (layout.MODEL_WEIGHTS, lambda p: save_model(model, str(p))))

    if output is None:
        # optimizer.pt first: model.safetensors is what marks a checkpoint as consolidated.
        for name, write in writers:
            atomic_write(ckpt / name, write)
        integrity.write_manifest(ckpt)
        return ckpt
    try:
        out = claim_output(output, overwrite=False, inputs=[ckpt])
    except OutputError as e:
        raise CheckpointError(str(e)) from None
    with staged_directory(out) as tmp:
        shutil.copytree(ckpt, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(SHARDED_DIR, layout.MODEL_WEIGHTS, layout.OPTIMIZER_STATE))
        for name, write in writers:
            write(tmp / name)
        integrity.write_manifest(tmp)
    return out
