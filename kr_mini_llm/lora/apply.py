"""Putting adapters on a model (the last `num_layers` blocks), counting them, and fusing them.

Keys name a projection inside a block as mlx-lm's `lora_parameters.keys` do
("self_attn.q_proj", "mlp.down_proj", ...); short forms ("q", "q_proj", "down") are accepted.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..errors import KrMiniLlmError
from .dora import DoRALinear
from .layer import LoRALinear

ATTENTION_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_KEYS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
ALL_KEYS = ATTENTION_KEYS + MLP_KEYS
DEFAULT_KEYS = ATTENTION_KEYS
ADAPTER_TYPES = ("lora", "dora")  # fine_tune_types that train adapters ("full" trains every weight)
_ALIASES = {**{k.split(".")[1]: k for k in ALL_KEYS}, **{k.split(".")[1].removesuffix("_proj"): k for k in ALL_KEYS},
            **{k: k for k in ALL_KEYS}, "attn": ATTENTION_KEYS, "mlp": MLP_KEYS, "all": ALL_KEYS}


class LoRAError(KrMiniLlmError, ValueError):
    """Bad LoRA settings or adapter files; the message says what is wrong and how to fix it."""


@dataclass
class LoRAParameters:
    """mlx-lm's `lora_parameters`: rank, scale (multiplies B A), dropout, keys."""
    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    keys: list = field(default_factory=lambda: list(DEFAULT_KEYS))

    def __post_init__(self):
        self.keys = normalize_keys(self.keys)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise LoRAError(f"LoRA rank must be a positive integer, got {self.rank!r} (try --lora-rank 8)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise LoRAError(f"LoRA dropout must be in [0, 1), got {self.dropout} (try --lora-dropout 0.05)")
        if not float(self.scale) > 0:
            raise LoRAError(f"LoRA scale must be > 0, got {self.scale} (mlx-lm's default is 20.0)")
        self.scale, self.dropout = float(self.scale), float(self.dropout)

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_keys(keys) -> list:
    if isinstance(keys, str):
        keys = [k for k in keys.replace(",", " ").split() if k]
    out: list = []
    for k in keys:
        full = _ALIASES.get(k)
        if full is None:
            raise LoRAError(f"unknown LoRA key {k!r}; use projections of a block: {', '.join(ALL_KEYS)} "
                            "(or q, k, v, o, gate, up, down, attn, mlp, all)")
        for f in (full,) if isinstance(full, str) else full:
            if f not in out:
                out.append(f)
    if not out:
        raise LoRAError("no LoRA keys given; the default is q, k, v, o")
    return sorted(out, key=ALL_KEYS.index)


def adapted_layers(num_layers: int, depth: int) -> list:
    """Indices of the last `num_layers` blocks (-1: all) of a `depth`-block model."""
    if num_layers == -1:
        return list(range(depth))
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise LoRAError(f"--num-layers must be a positive number of blocks or -1 for all, got {num_layers!r}")
    if num_layers > depth:
        raise LoRAError(f"--num-layers {num_layers} is more than the model's {depth} blocks; "
                        f"use at most {depth} (or -1 for all)")
    return list(range(depth - num_layers, depth))


def apply_lora(model: nn.Module, num_layers: int, params: LoRAParameters, dora: bool = False) -> nn.Module:
    """Freezes every parameter of `model` and wraps the `params.keys` projections of its last
    `num_layers` blocks in LoRALinear (DoRALinear with `dora`) (in place; returns the model)."""
    layer = DoRALinear if dora else LoRALinear
    if lora_modules(model):
        raise LoRAError("this model already carries LoRA adapters; fuse them first or load a fresh base")
    for p in model.parameters():
        p.requires_grad_(False)
    for i in adapted_layers(num_layers, len(model.layers)):
        block = model.layers[i]
        for key in params.keys:
            parent_name, child = key.split(".")
            parent = getattr(block, parent_name)
            setattr(parent, child, layer(getattr(parent, child), params.rank, params.scale, params.dropout))
    return model


def uses_dora(model: nn.Module) -> bool:
    return any(isinstance(m, DoRALinear) for m in lora_modules(model).values())


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model's outputs while inside: every adapted layer computes x W^T alone (DPO's
    reference model when only adapters train, without a second copy of the base)."""
    mods = lora_modules(model)
    for m in mods.values():
        m.disabled = True
    try:
        yield model
    finally:
        for m in mods.values():
            m.disabled = False


def lora_modules(model: nn.Module) -> dict:
    """{qualified name: LoRALinear} in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict:
    """The adapter tensors only: {'layers.3.self_attn.q_proj.lora_A': ..., ...} (and lora_magnitude for DoRA)."""
    return {f"{name}.{p}": getattr(m, p).detach() for name, m in lora_modules(model).items()
            for p in m.adapter_names}


def trainable_parameters(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> tuple:
    """(trainable, total) parameter counts, shared (tied) tensors counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_trainable(model: nn.Module) -> str:
    trainable, total = parameter_counts(model)
    return (f"Trainable parameters: {100 * trainable / total:.4f}% "
            f"({trainable:,}/{total:,}; {trainable / 1e6:.3f}M/{total / 1e6:.3f}M)")


def fuse_lora(model: nn.Module) -> nn.Module:
    """Replaces every LoRALinear by the layer it wrapped, holding W + scale * B A (in place)."""
    for name, m in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, m.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
