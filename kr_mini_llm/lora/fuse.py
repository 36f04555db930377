"""Fuse: base + adapters -> one plain model, written as a checkpoint directory that
Generator.from_pretrained, scripts/lora.py --model and load_checkpoint read, and optionally as a
HF directory (save_hf) for transformers and llama.cpp's convert_hf_to_gguf.py.

    save-path/
      model.safetensors  model_config.yaml  tokenizer.model  trainer_state.json  checksums.json
      adapter_config.json          the adapters it was fused from (a record)
      hf/                          with --export-hf: what scripts/export.py --format hf writes

The HF copy is written by the caller's `write_hf` (export.exporter.write_hf_copy): export sits
above lora (it fuses adapters itself), so lora does not import it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..io import layout
from ..io.atomic import staged_directory
from ..checkpoint import integrity
from .adapters import CONFIG_NAME, load_adapters
from .apply import LoRAError, fuse_lora, lora_modules


def save_model_dir(model, out: str | os.PathLike, tokenizer_path: str | os.PathLike, state: dict | None = None,
                   write_hf=None, extra_files: dict | None = None) -> Path:
    """Writes a plain (adapter-free) model as a checkpoint directory, via a temporary directory
    renamed into place, so `out` is either complete or untouched."""
    from safetensors.torch import save_model

    if lora_modules(model):
        raise LoRAError("the model still carries LoRA adapters; fuse them first (fuse_lora)")
    out = Path(out)
    with staged_directory(out) as tmp:
        save_model(model, str(tmp / layout.MODEL_WEIGHTS))
        model.config.save_yaml(tmp / layout.MODEL_CONFIG)
        shutil.copyfile(tokenizer_path, tmp / layout.TOKENIZER)
        (tmp / layout.TRAINER_STATE).write_text(json.dumps({"step": 0, **(state or {})}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if write_hf is not None:   # write_hf(model, tokenizer_path, directory)
            write_hf(model, Path(tokenizer_path), tmp / "hf")
        integrity.write_manifest(tmp)
    return out


def fuse_to_dir(base, adapter_path: str | os.PathLike, save_path: str | os.PathLike, write_hf=None) -> Path:
    """Loads the adapters onto `base` (a lora.base.BaseModel), fuses them, writes `save_path`
    (and save_path/hf through `write_hf`, see save_model_dir)."""
    config = load_adapters(base.model, adapter_path)
    fuse_lora(base.model)
    record = (Path(adapter_path) / CONFIG_NAME).read_text(encoding="utf-8")
    return save_model_dir(base.model, save_path, base.tokenizer_path,
                          {"fused_from": {"base": str(base.source), "adapters": str(adapter_path),
                                          "base_model_fingerprint": config.get("base_model_fingerprint")}},
                          write_hf=write_hf, extra_files={CONFIG_NAME: record})
