"""HF transformers checkpoints in and out (LlamaForCausalLM without QK-norm, Qwen3ForCausalLM with).

Our weight names are HF's without the leading "model.", and both use rotate-half RoPE, so
conversion is renaming alone. transformers itself is not needed: config.json and safetensors
files are read and written directly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import _C
from ..io import layout
from ..io.atomic import atomic_write, atomic_write_text
from .config import ConfigError, TransformerConfig

_SUPPORTED = ("llama", "qwen3")


def _rope_from_hf(cfg: dict):
    """(rope_theta, rope_scaling) of an HF config.json. The config's parser reads HF's type names and
    keys; a key it does not know is left out here, as HF ignores a key its type does not use."""
    params = cfg.get("rope_parameters")
    if params is None:  # transformers < 5: rope_theta + rope_scaling
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if params.get("rope_type") is None and params.get("type") is None:  # HF's default RoPE
        return theta, None
    return theta, {k: v for k, v in params.items() if k in _C.ROPE_SCALING_KEYS}


def config_from_hf(cfg: dict, where: str = layout.HF_CONFIG) -> TransformerConfig:
    kind = cfg.get("model_type")
    if kind not in _SUPPORTED:
        raise ConfigError(f"{where}: model_type '{kind}' is not supported; kr-mini-llm loads {', '.join(_SUPPORTED)}")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ConfigError(f"{where}: {flag}=true is not supported (kr-mini-llm models have no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act '{cfg['hidden_act']}' is not supported (SwiGLU uses silu)")
    if cfg.get("use_sliding_window"):
        raise ConfigError(f"{where}: sliding-window attention is not supported")
    theta, scaling = _rope_from_hf(cfg)
    heads = cfg["num_attention_heads"]
    fields = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        intermediate_size=cfg["intermediate_size"], max_seq_length=cfg.get("max_position_embeddings", 2048),
        rope_theta=theta, rope_scaling=scaling, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        initializer_range=float(cfg.get("initializer_range", 0.02)), qk_norm=kind == "qwen3",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim * heads != cfg["hidden_size"]:
        fields["head_dim"] = head_dim
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = cfg.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        fields[key] = -1 if value is None else value
    return TransformerConfig.from_dict(fields, where)


def config_to_hf(config: TransformerConfig) -> dict:
    kind = "qwen3" if config.qk_norm else "llama"
    scaling = dict(config.rope_scaling or {"type": "none"})
    rope = {"rope_type": _C.ROPE_SCALING_HF_TYPES[scaling.pop("type")], "rope_theta": config.rope_theta, **scaling}
    cfg = {
        "architectures": ["Qwen3ForCausalLM" if kind == "qwen3" else "LlamaForCausalLM"],
        "model_type": kind, "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.resolved_head_dim,
        "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_seq_length,
        "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps,
        "initializer_range": config.initializer_range, "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        # Both spellings: transformers >= 5 reads rope_parameters, older versions the other two.
        "rope_parameters": rope, "rope_theta": config.rope_theta,
        "rope_scaling": None if not config.rope_scaling else rope,
        "torch_dtype": "float32",
    }
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, key)
        cfg[key] = None if value < 0 else value
    if kind == "qwen3":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.num_layers)
    return cfg


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    index = path / layout.HF_WEIGHTS_INDEX
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / layout.MODEL_WEIGHTS).exists():
        files = [layout.MODEL_WEIGHTS]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors (or model.safetensors.index.json); "
                                "save the HF model with safe_serialization=True")
    state = {}
    for f in files:
        state.update(load_file(str(path / f)))
    return state


def load_hf(path: str | os.PathLike, model_cls, ops_impl: str = "fused"):
    """Builds `model_cls(config, ops_impl)` from a HF directory and loads its weights."""
    path = Path(path)
    cfg_file = path / layout.HF_CONFIG
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: not a HF model directory (no config.json)")
    config = config_from_hf(json.loads(cfg_file.read_text()), str(cfg_file))
    model = model_cls(config, ops_impl=ops_impl)
    state = {}
    for name, tensor in _read_safetensors(path).items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        state[name.removeprefix("model.")] = tensor
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["embed_tokens.weight"]
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.shape != state[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, the config "
                                 f"implies {tuple(p.shape)}")
            p.copy_(state[name])
    return model


def save_hf(model, path: str | os.PathLike) -> None:
    """Writes config.json + model.safetensors that transformers.AutoModelForCausalLM loads."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        key = name if name.startswith("lm_head.") else "model." + name
        state[key] = tensor.detach().contiguous().cpu()
    atomic_write(path / layout.MODEL_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(path / layout.HF_CONFIG, json.dumps(config_to_hf(model.config), indent=2) + "\n")
