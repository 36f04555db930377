"""Inference model directories: packed (bf16, int8 or int4) weights that the Generator loads directly.

DIR/
  model.safetensors    the Transformer's weight names; int8 linears as NAME.weight (int8) + NAME.scales (fp32),
                       int4 ones as NAME.weight (uint8 [out, in / 2], ops.decode_linear's packing) + NAME.scales
                       (fp16; directories written before int4 scales were fp16 hold fp32 ones, rounded at load)
  model_config.yaml    the model config (as in a checkpoint)
  inference.json       {"format": "kr-mini-llm-inference", "version": 1, "dtype": "int8",
                        "quantization": {"scheme": "symmetric", "bits": 8, "scale_dtype": "float32",
                                         "group_size": 128 | null (one scale per output channel)}}
                       int4: "bits": 4, "packing": "q4_0", "scale_dtype": "float16", "group_size": 32 (a
                       multiple of 32), and
                       "int8_layers": the layers kept in int8 per output channel (input size not a
                       multiple of the group size)
  tokenizer.model      the tokenizer

Written to a temporary directory and swapped into place, so DIR is either complete or untouched.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import KrMiniLlmError
from ..io import layout
from ..io.atomic import staged_directory
from ..io.layout import INFERENCE_INFO as INFO_FILE
from ..model import TransformerConfig
from .decode_model import ConfigMismatchError, DecodeModel
from .packed import DTYPES, INT4_GROUP_SIZE

FORMAT = "kr-mini-llm-inference"
VERSION = 1


class InferenceDirError(KrMiniLlmError, ValueError):
    pass


def is_inference_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def save_inference_model(model: DecodeModel, out: str | os.PathLike, tokenizer_path: str | os.PathLike | None,
                         group_size: int | None = None, source: str | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    info = {"format": FORMAT, "version": VERSION, "dtype": model.dtype}
    if model.dtype == "int8":
        info["quantization"] = {"scheme": "symmetric", "bits": 8, "scale_dtype": "float32",
                                "group_size": group_size}
    elif model.dtype == "int4":
        info["quantization"] = {"scheme": "symmetric", "bits": 4, "packing": "q4_0", "scale_dtype": "float16",
                                "group_size": group_size or INT4_GROUP_SIZE, "int8_layers": model.int8_layers}
    if source:
        info["source"] = source
    with staged_directory(out) as tmp:
        save_file(model.state_dict(), str(tmp / layout.MODEL_WEIGHTS), metadata={"format": FORMAT})
        model.config.save_yaml(tmp / layout.MODEL_CONFIG)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / layout.TOKENIZER)
    return out


def read_info(path: str | os.PathLike) -> dict:
    p = Path(path) / INFO_FILE
    try:
        info = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InferenceDirError(f"{p} is unreadable ({e}); re-run scripts/quantize.py") from e
    if info.get("format") != FORMAT or info.get("version") != VERSION or info.get("dtype") not in DTYPES:
        raise InferenceDirError(f"{p}: not a {FORMAT} v{VERSION} directory (got {info}); re-run scripts/quantize.py")
    return info


def load_inference_model(path: str | os.PathLike, dtype: str | None = None) -> DecodeModel:
    """The DecodeModel saved in `path`; `dtype`, when given, must be the one it was saved in."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    info = read_info(path)
    if dtype is not None and dtype != info["dtype"]:
        raise InferenceDirError(f"{path} holds {info['dtype']} weights, not {dtype}: load it with "
                                f"dtype={info['dtype']!r}, or quantize the original checkpoint to {dtype}")
    config = TransformerConfig.from_yaml(path / layout.MODEL_CONFIG)
    try:
        tensors = load_file(str(path / layout.MODEL_WEIGHTS))
    except (OSError, SafetensorError) as e:
        raise InferenceDirError(f"{path}/model.safetensors cannot be read: {e}") from e
    try:
        model = DecodeModel(config, tensors, info["dtype"])
    except ConfigMismatchError as e:
        raise InferenceDirError(f"{path}: {e}") from e
    known = set(model.state_dict())
    extra = sorted(set(tensors) - known)
    if extra:
        raise InferenceDirError(f"{path}/model.safetensors has tensors this config does not use: {extra[:5]}; "
                                "the weights and model_config.yaml do not belong together")
    return model
