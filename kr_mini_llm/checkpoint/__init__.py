"""Checkpoint storage, below training: model directories and how they are found, written and read.

    from kr_mini_llm.checkpoint import load_model_dir
    model, tokenizer, kind = load_model_dir("checkpoints/demo")    # "checkpoint" | "hf" | "quantized"

  model_dir.py   load_model_dir, the one loader of a model and its tokenizer; load_model; model_tokenizer
  dirs.py        which checkpoint a path means (resolve_checkpoint, list_checkpoints); CheckpointError
  store.py       writing a checkpoint directory (staged, checksummed, renamed), reading its weights
  sharded.py     FSDP's DCP shards: writing and reading them
  integrity.py   checksums.json: recorded at save, verified at load
  safe_dcp.py    reading DCP shards without running code from them

It imports only ops, model, io, data.tokenizer, device and errors. What a training run keeps in a
checkpoint beyond the model (optimizer, RNG and trainer state) and the ranks that save it are
training/'s (run_checkpoint.py, distributed.py), which use this package.
"""
from .dirs import CheckpointError, NoCheckpointError, list_checkpoints, resolve_checkpoint
from .integrity import IntegrityError
from .model_dir import KINDS, LoadedModel, TokenizerPairingError, load_model, load_model_dir, model_tokenizer
from .safe_dcp import UnsafeCheckpointError
from .store import (checkpoint_size, clean_leftovers, load_pickled, load_weights, nonfinite_parameters,
                    write_checkpoint, write_weights)

__all__ = ["CheckpointError", "IntegrityError", "KINDS", "LoadedModel", "NoCheckpointError", "TokenizerPairingError",
           "UnsafeCheckpointError", "checkpoint_size", "clean_leftovers", "list_checkpoints", "load_model",
           "load_model_dir", "load_pickled", "load_weights", "model_tokenizer", "nonfinite_parameters",
           "resolve_checkpoint", "write_checkpoint", "write_weights"]
