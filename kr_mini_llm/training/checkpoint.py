"""Checkpoints: written to a temporary directory and renamed, so a crash mid-save never
leaves a broken latest checkpoint; read without unpickling arbitrary objects.

checkpoint-STEP/
  model.safetensors       weights
  optimizer.pt            optimizer state (tensors and numbers only; loaded with weights_only)
  rng.pt                  RNG states (same)
  trainer_state.json      step, tokens seen, best validation loss, data position, ...
  config.yaml             training config
  model_config.yaml       model config
  tokenizer.model         the tokenizer the model was trained with (when known)

FSDP runs write `dcp/` (sharded model + optimizer) instead of the first two; see sharded_checkpoint.py.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    pass


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in output_dir, oldest first."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()
             and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or the latest checkpoint inside an output directory."""
    p = Path(path)
    if (p / "trainer_state.json").exists():
        return p
    found = list_checkpoints(p)
    if not found:
        raise CheckpointError(f"{p}: no checkpoint here (expected a checkpoint-STEP directory or an output "
                              "directory that contains them)")
    return found[-1]


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


def staging_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint-STEP is written before the rename that publishes it."""
    return Path(output_dir) / f".checkpoint-{step}.tmp"


def save_checkpoint(output_dir: str | os.PathLike, step: int, model, optimizer, trainer_state: dict,
                    train_config, model_config, tokenizer_path: str | None = None,
                    keep: int | None = None, write_weights=None) -> Path:
    """`write_weights(staging_dir)`, when given, replaces model.safetensors + optimizer.pt (FSDP: DCP shards)."""
    from safetensors.torch import save_model

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"checkpoint-{step}"
    tmp = staging_dir(out, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if write_weights is not None:
        write_weights(tmp)
    else:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    train_config.save_yaml(tmp / "config.yaml")
    model_config.save_yaml(tmp / "model_config.yaml")
    if tokenizer_path and Path(tokenizer_path).exists():
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
    _fsync_dir(tmp)
    replace_directory(tmp, final)
    _fsync_dir(out)
    if keep:
        for stale in list_checkpoints(out)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike, model, optimizer=None) -> dict:
    """Loads weights (and optimizer and RNG state when an optimizer is given); returns trainer_state."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    ckpt = resolve_checkpoint(path)
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: trainer_state.json is unreadable ({e}); the checkpoint is damaged") from e
    from .sharded_checkpoint import distributed_loader

    special = distributed_loader(ckpt, model)  # DCP shards, or an FSDP-sharded model: see there
    if special is not None:
        special(ckpt, model, optimizer)
    else:
        try:
            missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
        except (OSError, SafetensorError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt}/model.safetensors cannot be loaded into this model: {e}") from e
        if missing or unexpected:
            raise CheckpointError(f"{ckpt}/model.safetensors does not match the model: missing "
                                  f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if optimizer is not None:
        try:
            if special is None:
                optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
            set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt}: optimizer or RNG state cannot be loaded: {e}") from e
    state["path"] = str(ckpt)
    return state


def replace_directory(tmp: Path, final: Path) -> None:
    """Puts the finished directory `tmp` at `final`; an existing `final` is moved aside first and
    dropped only after the rename, so some complete copy exists at every moment."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
