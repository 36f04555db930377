"""The base model of a fine-tune: our checkpoint or output directory, or a HF Llama/Qwen3 directory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..io import layout
from .apply import LoRAError


@dataclass
class BaseModel:
    model: object            # Transformer
    tokenizer_path: Path
    source: Path             # the directory the weights came from
    kind: str                # "checkpoint" | "hf"


def load_base_model(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                    ops_impl: str = "fused") -> BaseModel:
    """checkpoint.load_model_dir, with the errors a fine-tune's --model flag should give."""
    from ..checkpoint import NoCheckpointError, TokenizerPairingError, load_model_dir

    path = Path(path)
    if not path.exists():
        raise LoRAError(f"--model {path}: no such directory (give a checkpoint or output directory of "
                        "scripts/train.py, or a HF Llama/Qwen3 directory)")
    try:
        loaded = load_model_dir(path, tokenizer, ops_impl=ops_impl)
    except NoCheckpointError as e:
        raise LoRAError(f"--model {path}: neither a kr-mini-llm checkpoint nor a HF model directory "
                        f"(no {layout.HF_CONFIG}): {e}") from None
    except TokenizerPairingError as e:
        raise LoRAError(str(e)) from None
    model, tok, kind = loaded
    return BaseModel(model, tok.path, loaded.source, kind)
