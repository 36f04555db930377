"""Sharded checkpoints of FSDP2 runs (torch.distributed.checkpoint, DCP) and their consolidation
into the ordinary checkpoint of checkpoint.py.

checkpoint-STEP/
  dcp/                    model and optimizer state: one .distcp file per saving rank + .metadata
  rng.pt  trainer_state.json  config.yaml  model_config.yaml  tokenizer.model   (as in checkpoint.py)
  model.safetensors  optimizer.pt                                   (after consolidate_checkpoint)

DCP re-shards on load, so a checkpoint saved by N ranks resumes on M ranks, in one process (DCP
then reads everything without a process group), or in Generator.from_pretrained; an ordinary
checkpoint resumes under FSDP too (rank 0 reads it and broadcasts). The staging directory and
the rename that publishes it are checkpoint.py's, so a crash mid-save keeps the previous one.
With more than one machine, output_dir must be on a filesystem that every rank can write.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from . import integrity, safe_dcp
from .checkpoint import CheckpointError, _fsync_dir, resolve_checkpoint, save_checkpoint, staging_dir

SHARDED_DIR = "dcp"


def is_sharded_checkpoint(ckpt: str | os.PathLike) -> bool:
    return (Path(ckpt) / SHARDED_DIR / ".metadata").is_file()


def is_sharded_model(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _distributed_now() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def distributed_loader(ckpt: Path, model: torch.nn.Module):
    """The loader checkpoint.load_checkpoint needs for this (checkpoint, model) pair, or None for its
    own single-file path: a sharded model reads DCP shards when there are some, else the single
    file through rank 0; a plain model reads DCP shards when there is no single file."""
    sharded_model = is_sharded_model(model)
    has_shards = is_sharded_checkpoint(ckpt)
    if has_shards and (sharded_model or not (ckpt / "model.safetensors").exists()):
        return load_sharded
    if sharded_model:
        if not (ckpt / "model.safetensors").exists():
            raise CheckpointError(f"{ckpt}: neither dcp/ shards nor model.safetensors; the checkpoint is incomplete")
        return load_full_into_sharded
    return None


# -- saving -------------------------------------------------------------------------------------
def save_sharded_checkpoint(ctx, output_dir, step, model, optimizer, trainer_state, train_config, model_config,
                            tokenizer_path=None, keep=None):
    """Every rank writes its shards into the staging directory that rank 0 makes; rank 0 adds the
    small files and renames it into place (checkpoint.save_checkpoint). Path on rank 0, else None."""
    tmp = staging_dir(output_dir, step)

    def write_shards(_staging=None):
        ctx.barrier()  # rank 0 has made a fresh, empty staging directory
        _dcp_save(model, optimizer, tmp / SHARDED_DIR)

    if ctx.is_main:
        path = save_checkpoint(output_dir, step, model, optimizer, trainer_state, train_config, model_config,
                               tokenizer_path, keep=keep, write_weights=write_shards)
    else:
        write_shards()
        path = None
    ctx.barrier()  # nobody moves on (or saves again) before checkpoint-STEP exists
    return path


def _dcp_save(model, optimizer, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path), no_dist=not _distributed_now())


# -- loading ------------------------------------------------------------------------------------
def load_sharded(ckpt: Path, model: torch.nn.Module, optimizer=None) -> None:
    """DCP shards into `model` (plain, DDP's module, or FSDP-sharded at any world size) and `optimizer`."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
    try:
        with warnings.catch_warnings():  # one process reading shards is intended, not a mistake to warn of
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            safe_dcp.load(state, ckpt / SHARDED_DIR, no_dist=not _distributed_now())
    except safe_dcp.UnsafeCheckpointError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # noqa: BLE001 -- DCP wraps per-rank failures in its own exception types
        raise CheckpointError(f"{ckpt}/{SHARDED_DIR} cannot be loaded into this model: {e}") from e
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_full_into_sharded(ckpt: Path, model: torch.nn.Module, optimizer=None) -> None:
    """An ordinary checkpoint into an FSDP-sharded model: rank 0 reads the files, DCP's state-dict
    helpers broadcast and shard them."""
    import torch.distributed as dist
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    full, optim_full, error = {}, {}, [None]
    if dist.get_rank() == 0:
        try:
            full = _with_tied_names(load_file(str(ckpt / "model.safetensors")), model)
            if optimizer is not None:
                optim_full = _optimizer_by_name(torch.load(ckpt / "optimizer.pt", weights_only=True), model, optimizer)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            error[0] = f"{ckpt}: cannot read the checkpoint on rank 0: {e}"
    dist.broadcast_object_list(error, src=0)  # every rank fails alike rather than waiting for a broadcast
    if error[0]:
        raise CheckpointError(error[0])
    set_model_state_dict(model, full, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_full, options=options)


def _with_tied_names(weights: dict, model: torch.nn.Module) -> dict:
    """safetensors stores a tied weight once; the state dict wants it under each of its names."""
    names_by_param: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_by_param.setdefault(id(p), []).append(name)
    for names in names_by_param.values():
        present = [n for n in names if n in weights]
        if present:
            for n in names:
                weights.setdefault(n, weights[present[0]])
    return weights


def _optimizer_by_name(saved: dict, model: torch.nn.Module, optimizer) -> dict:
    """torch's optimizer.state_dict() numbers parameters in param-group order; DCP's helpers want
    parameter names. The order is build_optimizer's, the same for a plain and a sharded model."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    order = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_count = sum(len(g["params"]) for g in saved["param_groups"])
    if saved_count != len(order) or len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"optimizer.pt holds {saved_count} parameters in {len(saved['param_groups'])} groups, "
                              f"this optimizer {len(order)} in {len(optimizer.param_groups)}")
    return {"state": {order[i]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}


# -- consolidation ------------------------------------------------------------------------------
def consolidate_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Adds model.safetensors + optimizer.pt, gathered from the DCP shards, to a sharded checkpoint
    (in place), or writes an ordinary checkpoint without the shards to `output`. One process, CPU,
    memory for the whole model and optimizer. Returns the checkpoint written."""
    from safetensors.torch import save_model

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
    model = Transformer(TransformerConfig.from_yaml(ckpt / "model_config.yaml"))
    optimizer = build_optimizer(model, TrainingConfig.from_yaml(ckpt / "config.yaml").train, torch.device("cpu"))
    load_sharded(ckpt, model, optimizer)

    if output is None:
        # optimizer.pt first: model.safetensors is what marks a checkpoint as consolidated.
        for name, write in (("optimizer.pt", lambda p: torch.save(optimizer.state_dict(), p)),
                            ("model.safetensors", lambda p: save_model(model, str(p)))):
            tmp = ckpt / f".{name}.tmp"
            write(tmp)
            os.replace(tmp, ckpt / name)
        integrity.write_manifest(ckpt)
        _fsync_dir(ckpt)
        return ckpt
    out = Path(output)
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new directory for the consolidated checkpoint")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp, ignore=shutil.ignore_patterns(SHARDED_DIR, "model.safetensors", "optimizer.pt"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_model(model, str(tmp / "model.safetensors"))
    integrity.write_manifest(tmp)
    _fsync_dir(tmp)
    os.replace(tmp, out)
    return out
