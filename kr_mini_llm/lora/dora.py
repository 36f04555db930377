"""DoRALinear: weight-decomposed LoRA (Liu et al., 2024), as PEFT's `use_dora=True` computes it.

    W' = m * (W + scale * B A) / ||W + scale * B A||        (norm of each output row)
    y  = x W'^T = (m / n) * (x W^T + scale * x A^T B^T)

m (`lora_magnitude`, [out]) starts at the row norms of W, so a fresh adapter leaves the model
unchanged. The norm n is treated as a constant in the backward (DoRA paper, section 4.3; PEFT
detaches it too), so A and B get their gradient through the low-rank update only and the
[out, in] norm costs no backward. With dropout, PEFT applies the magnitude correction to the
dropped-out input: y = x W^T + (m/n - 1) * drop(x) W^T + (m/n) * scale * drop(x) A^T B^T.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layer import LoRALinear


class DoRALinear(LoRALinear):
    adapter_names = ("lora_A", "lora_B", "lora_magnitude")

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float = 0.0):
        super().__init__(base, rank, scale, dropout)
        with torch.no_grad():
            self.lora_magnitude = nn.Parameter(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """||W + scale * B A|| per output row, without gradient (in the weight's dtype, as PEFT)."""
        with torch.no_grad():
            w = self.weight + self.scale * (self.lora_B @ self.lora_A)
            return torch.linalg.norm(w, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = self.base_ops.linear if self.base_ops is not None else F.linear
        y = linear(x, self.weight)
        if self.disabled:
            return y
        factor = (self.lora_magnitude / self.weight_norm()).to(y.dtype)
        dropping = self.dropout > 0 and self.training
        a_in = F.dropout(x, self.dropout, True) if dropping else x
        update = self.scale * F.linear(F.linear(a_in, self.lora_A), self.lora_B)
        if not dropping:
            return factor * (y + update)
        return y + (factor - 1) * linear(a_in, self.weight) + factor * update

    def delta_weight(self) -> torch.Tensor:
        """W' - W in float32 (float64 for float64 weights): what fusing adds to the base weight."""
        acc = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        w = self.weight.to(acc) + self.scale * (self.lora_B.to(acc) @ self.lora_A.to(acc))
        factor = self.lora_magnitude.to(acc) / torch.linalg.norm(w, dim=1)
        return factor[:, None] * w - self.weight.to(acc)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"
