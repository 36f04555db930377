"""Sharded checkpoints of FSDP2 runs (torch.distributed.checkpoint, DCP): writing and reading the
shards of the model and optimizer state.

checkpoint-STEP/
  dcp/                    model and optimizer state: one .distcp file per saving rank + .metadata
  rng.pt  trainer_state.json  config.yaml  model_config.yaml  tokenizer.model   (as in store.py)
  model.safetensors  optimizer.pt                  (after training.run_checkpoint.consolidate_checkpoint)

DCP re-shards on load, so a checkpoint saved by N ranks resumes on M ranks, in one process (DCP
then reads everything without a process group), or in Generator.from_pretrained; an ordinary
checkpoint resumes under FSDP too (rank 0 reads it and broadcasts). Every rank writes its shards
(save_shards) into the staging directory of store.write_checkpoint, whose rename publishes them,
so a crash mid-save keeps the previous checkpoint; training.run_checkpoint.save_sharded_checkpoint
runs that sequence on the ranks.
With more than one machine, output_dir must be on a filesystem that every rank can write.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..io import layout
from ..io.layout import SHARDED_DIR, is_sharded_checkpoint
from . import safe_dcp
from .dirs import CheckpointError


def is_sharded_model(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _distributed_now() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def distributed_loader(ckpt: Path, model: torch.nn.Module):
    """The loader store.load_weights needs for this (checkpoint, model) pair, or None for its
    own single-file path: a sharded model reads DCP shards when there are some, else the single
    file through rank 0; a plain model reads DCP shards when there is no single file."""
    sharded_model = is_sharded_model(model)
    has_shards = is_sharded_checkpoint(ckpt)
    if has_shards and (sharded_model or not (ckpt / layout.MODEL_WEIGHTS).exists()):
        return load_sharded
    if sharded_model:
        if not (ckpt / layout.MODEL_WEIGHTS).exists():
            raise CheckpointError(f"{ckpt}: neither dcp/ shards nor model.safetensors; the checkpoint is incomplete")
        return load_full_into_sharded
    return None


# -- saving -------------------------------------------------------------------------------------
def save_shards(model, optimizer, path: Path) -> None:
    """This rank's DCP shards of `model` and `optimizer` (every rank calls it, with the same `path`)."""
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
            full = _with_tied_names(load_file(str(ckpt / layout.MODEL_WEIGHTS)), model)
            if optimizer is not None:
                optim_full = _optimizer_by_name(torch.load(ckpt / layout.OPTIMIZER_STATE, weights_only=True), model, optimizer)
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
