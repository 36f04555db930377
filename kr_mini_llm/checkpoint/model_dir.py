"""Loading a model directory: the one loader that generation, fine-tuning, fuse, export, the server
and evaluation start from.

    from kr_mini_llm.checkpoint import load_model_dir
    model, tokenizer, kind = load_model_dir("checkpoints/demo")

A model directory is one of these kinds:
  "checkpoint"  a checkpoint-STEP directory, or an output directory (its latest complete
                checkpoint), single-file or sharded (dcp/)
  "hf"          a HF Llama/Qwen3 directory (config.json + safetensors)
  "quantized"   packed inference weights of scripts/quantize.py: only a caller that can run them
                (the Generator) passes `load_quantized`; everyone else gets an error naming the
                checkpoint they were made from
and its model comes with the tokenizer it was trained with (model_tokenizer), so no load path pairs
a model with another tokenizer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..io import layout
from .dirs import CheckpointError, resolve_checkpoint
from .store import load_weights

__all__ = ["KINDS", "LoadedModel", "TokenizerPairingError", "load_model", "load_model_dir", "model_tokenizer"]

KINDS = ("checkpoint", "hf", "quantized")


class TokenizerPairingError(CheckpointError):
    """A model directory has no tokenizer of its own and none was given, or the tokenizer is not the
    one the model was trained with."""


class LoadedModel(tuple):
    """What load_model_dir returns: unpacks as (model, tokenizer, kind); `.source` is the directory
    the weights came from (a checkpoint of an output directory: that checkpoint)."""

    def __new__(cls, model, tokenizer, kind: str, source: Path):
        loaded = super().__new__(cls, (model, tokenizer, kind))
        loaded.source = Path(source)
        return loaded

    model = property(lambda self: self[0])
    tokenizer = property(lambda self: self[1])
    kind = property(lambda self: self[2])


def load_model_dir(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None, *,
                   ops_impl: str = "fused", load_quantized: Callable | None = None) -> LoadedModel:
    """(model, tokenizer, kind) of the model directory `path` (see the module's docstring for the
    kinds). `tokenizer`: a tokenizer file to use instead of the directory's own; it must be the one
    the model was trained with (model_tokenizer). `load_quantized(path)`: the model of a quantized
    directory; without it, such a directory is refused.

    Raises NoCheckpointError when `path` holds no model to load (the message says what it holds),
    TokenizerPairingError when the tokenizer is missing or not the model's, and CheckpointError
    when the files are damaged or do not fit together."""
    path = Path(path)
    if load_quantized is not None and (path / layout.INFERENCE_INFO).is_file():
        model, source, kind = load_quantized(path), path, "quantized"
    else:
        kind = "hf" if layout.is_hf_dir(path) else "checkpoint"
        model, source = load_model(path, ops_impl)
    return LoadedModel(model, model_tokenizer(source, model.config.vocab_size, tokenizer), kind, source)


def load_model(path: str | os.PathLike, ops_impl: str = "fused"):
    """(Transformer with the weights, the directory they came from), without a tokenizer: `path` is
    a checkpoint directory, an output directory (its latest complete checkpoint), a sharded (dcp/)
    checkpoint, or a HF Llama/Qwen3 directory (config.json + safetensors)."""
    from ..model import Transformer, TransformerConfig

    if layout.is_hf_dir(path):
        return Transformer.from_hf(path, ops_impl=ops_impl), Path(path)
    ckpt = resolve_checkpoint(path)
    model = Transformer(TransformerConfig.from_yaml(ckpt / layout.MODEL_CONFIG), ops_impl=ops_impl)
    load_weights(ckpt, model)
    return model, ckpt


def model_tokenizer(source: str | os.PathLike, vocab_size: int, tokenizer: str | os.PathLike | None = None):
    """The Tokenizer to pair with the model loaded from `source` (its `vocab_size` embedding rows):
    `tokenizer` when given, else the tokenizer.model saved beside the weights. load_model_dir calls
    this, so no load path pairs a model with a tokenizer it was not trained with:
    - a given tokenizer other than the directory's own (by content) is refused;
    - one with more pieces than the model has rows is refused (its ids would index past the embedding),
      and a given one with fewer (the model would emit ids it cannot decode), where the directory has
      no tokenizer of its own to vouch for it."""
    from ..data.tokenizer import Tokenizer, file_fingerprint

    own = Path(source) / layout.TOKENIZER
    if tokenizer is None and not own.is_file():
        raise TokenizerPairingError(f"{source}: no {layout.TOKENIZER} beside the weights; pass --tokenizer "
                                    "models/tokenizer.model (the SentencePiece model it was trained with)")
    tok = Tokenizer(tokenizer if tokenizer is not None else own)
    trained_with = own.is_file() and (tokenizer is None or file_fingerprint(own) == tok.fingerprint)
    if tokenizer is not None and own.is_file() and not trained_with:
        raise TokenizerPairingError(f"--tokenizer {tokenizer} ({tok.vocab_size} pieces, fingerprint {tok.fingerprint}) "
                                    f"is not the tokenizer this model was trained with ({own}, fingerprint "
                                    f"{file_fingerprint(own)}); leave out --tokenizer to use the model's own")
    if tok.vocab_size > vocab_size or (tok.vocab_size < vocab_size and not trained_with):
        raise TokenizerPairingError(f"the tokenizer {tok.path} has {tok.vocab_size} pieces but the model in {source} "
                                    f"has {vocab_size} embedding rows: it is not the tokenizer this model was trained "
                                    "with; pass the one it was trained with (--tokenizer)")
    return tok
