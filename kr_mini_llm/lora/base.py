"""The base model of a fine-tune: our checkpoint or output directory, or a HF Llama/Qwen3 directory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .apply import LoRAError


@dataclass
class BaseModel:
    model: object            # Transformer
    tokenizer_path: Path
    source: Path             # the directory the weights came from
    kind: str                # "checkpoint" | "hf"


def load_base_model(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                    ops_impl: str = "fused") -> BaseModel:
    from ..model import Transformer, TransformerConfig
    from ..training.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    path = Path(path)
    if not path.exists():
        raise LoRAError(f"--model {path}: no such directory (give a checkpoint or output directory of "
                        "scripts/train.py, or a HF Llama/Qwen3 directory)")
    if (path / "config.json").is_file():
        model, source, kind = Transformer.from_hf(path, ops_impl=ops_impl), path, "hf"
    else:
        try:
            ckpt = resolve_checkpoint(path)
        except CheckpointError as e:
            raise LoRAError(f"--model {path}: neither a kr-mini-llm checkpoint nor a HF model directory "
                            f"(no config.json): {e}") from None
        model = Transformer(TransformerConfig.from_yaml(ckpt / "model_config.yaml"), ops_impl=ops_impl)
        load_checkpoint(ckpt, model)
        source, kind = ckpt, "checkpoint"
    tok = Path(tokenizer) if tokenizer else source / "tokenizer.model"
    if not tok.is_file():
        raise LoRAError(f"{source}: no tokenizer.model beside the weights; pass --tokenizer "
                        "models/tokenizer.model (the SentencePiece model the base was trained with)")
    return BaseModel(model, tok, source, kind)
