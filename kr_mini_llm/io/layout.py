"""The names of every file kr-mini-llm writes or reads beside a model, and which kind of model
directory a path is. Other modules say `layout.MODEL_WEIGHTS`, never the string.

output_dir/                         what scripts/train.py writes
  config.yaml                       the training config the run started with
  metrics.jsonl  loss_curve.png
  checkpoint-STEP/                  one checkpoint (checkpoint/store.py, training/run_checkpoint.py)
    model.safetensors  optimizer.pt  rng.pt  trainer_state.json  config.yaml  model_config.yaml
    tokenizer.model  checksums.json
    dcp/                            FSDP runs: sharded model + optimizer instead of the first two
HF directory                        config.json + model.safetensors (or an index and shards)
adapters/                           adapters.safetensors + adapter_config.json (lora/adapters.py)
PEFT directory                      adapter_model.safetensors + adapter_config.json (lora/peft.py)
inference directory                 model.safetensors + model_config.yaml + inference.json (scripts/quantize.py)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .atomic import TMP_SUFFIX

# -- a checkpoint --------------------------------------------------------------------------------
MODEL_WEIGHTS = "model.safetensors"
OPTIMIZER_STATE = "optimizer.pt"
RNG_STATE = "rng.pt"
TRAINER_STATE = "trainer_state.json"
TRAINING_CONFIG = "config.yaml"
MODEL_CONFIG = "model_config.yaml"
TOKENIZER = "tokenizer.model"
CHECKSUMS = "checksums.json"             # integrity.py
SHARDED_DIR = "dcp"
SHARDED_METADATA = ".metadata"           # inside dcp/: written last by DCP, so it marks complete shards

# -- an output directory -------------------------------------------------------------------------
METRICS = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")

# -- HF, adapters, inference directories ---------------------------------------------------------
HF_CONFIG = "config.json"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_GENERATION_CONFIG = "generation_config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
INFERENCE_INFO = "inference.json"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(name: str) -> int | None:
    """STEP of a `checkpoint-STEP` directory name, None for any other name."""
    m = _CHECKPOINT_NAME.match(name)
    return int(m.group(1)) if m else None


def staging_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint-STEP is written before the rename that publishes it."""
    return Path(output_dir) / f".{checkpoint_name(step)}{TMP_SUFFIX}"


def is_hf_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / HF_CONFIG).is_file()


def is_sharded_checkpoint(ckpt: str | os.PathLike) -> bool:
    return (Path(ckpt) / SHARDED_DIR / SHARDED_METADATA).is_file()
