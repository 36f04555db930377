"""LoRALinear: a frozen linear layer plus a trainable low-rank update.

    y = x W^T + scale * dropout(x) A^T B^T        A [rank, in], B [out, rank]

`scale` multiplies the update as in mlx-lm (PEFT's lora_alpha / r). A is initialised like
nn.Linear (Kaiming-uniform) and B with zeros, so a fresh adapter leaves the model unchanged.
The base weight stays the very Parameter of the wrapped nn.Linear, registered as `weight`:
the model's state_dict keeps its names (`...q_proj.weight`) and only gains `lora_A`/`lora_B`.
A and B are kept [rank, in] / [out, rank] like PEFT's lora_A/lora_B weights, so export and
import are renaming alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.layers import Linear


class LoRALinear(nn.Module):
    adapter_names = ("lora_A", "lora_B")  # the trainable tensors an adapter file holds
    disabled = False  # set by apply.adapters_disabled: the base layer's output alone

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if base.bias is not None:
            raise ValueError("LoRALinear: the base layer has a bias; kr-mini-llm models have none")
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale, self.dropout = rank, float(scale), float(dropout)
        self.weight = base.weight
        self.weight.requires_grad_(False)
        # The model's op set, when the base is the model's Linear: its product for the frozen base
        # (the faster GEMM library per shape) and the class a merged layer gets back.
        self.base_ops = base.ops if isinstance(base, Linear) else None
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_ops.linear(x, self.weight) if self.base_ops is not None else F.linear(x, self.weight)
        if self.disabled:
            return y
        a_in = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        # [.., in] -> [.., rank] -> [.., out]: two thin GEMMs, the [out, in] product never formed.
        update = F.linear(F.linear(a_in, self.lora_A), self.lora_B)
        return y + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A, in float32 (or float64 for float64 weights): the fused update of W."""
        acc = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        return self.scale * (self.lora_B.to(acc) @ self.lora_A.to(acc))

    def merged(self) -> nn.Linear:
        """The layer it wrapped (the model's Linear, or a plain nn.Linear) holding W + scale * B A
        (the base weight is not modified)."""
        out = (Linear(self.in_features, self.out_features, self.base_ops) if self.base_ops is not None
               else nn.Linear(self.in_features, self.out_features, bias=False))
        out.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_((self.weight.to(self.delta_weight().dtype) + self.delta_weight()).to(self.weight.dtype))
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scale={self.scale}, dropout={self.dropout}")
