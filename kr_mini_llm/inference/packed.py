"""Inference weights: a linear layer's weight stored in fp32, bf16, int8 + scales, or int4 + scales
(packed two per byte in a uint8 tensor [out, in / 2]; see ops.decode_linear).

A few rows (a decode step: batch x new tokens up to DECODE_MAX_ROWS) go through the decode_linear
kernels, which stream the weight once in its storage dtype. More rows (a prefill) go through an
ordinary GEMM: fp32 weights in fp32; bf16, int8 and int4 weights in bf16 where bf16 GEMMs pay on this
CPU (native and measured faster than fp32: `bf16_prefill`), else in fp32.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from .. import ops
from ..ops.decode_linear import INT4_BLOCK, embedding_rows

log = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16", "int8", "int4")
# Rows up to which the decode kernels beat a GEMM: int8 and int4 go further, since their GEMM must
# first dequantise the whole weight.
DECODE_MAX_ROWS = {torch.float32: 16, torch.bfloat16: 16, torch.int8: 64, torch.uint8: 64}
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8", torch.uint8: "int4"}
INT4_GROUP_SIZE = INT4_BLOCK  # int4's default group: Q4_0's 32 inputs


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


@functools.lru_cache(maxsize=None)
def bf16_prefill() -> bool:
    """Whether prefill GEMMs of bf16/int8 weights run in bf16 here: training's rule
    (device.bf16_matmuls_pay: bf16 native and measured at least 1.15x fp32's GEMM rate); decided
    once, logged once where not. Elsewhere the weights are widened to fp32 for the GEMM."""
    from ..device import bf16_pays_here

    pays, why = bf16_pays_here()
    if not pays:
        log.warning(f"{why}: bf16/int8 weights still work, but prefill GEMMs widen them to fp32")
    return pays


class PackedLinear:
    """y = x W^T for W [out, in] held as `weight` (fp32 / bf16 / int8 / int4 packed in uint8 [out, in / 2])
    and, for int8 and int4, `scales` [out, G]."""

    __slots__ = ("weight", "scales", "decode_max_rows", "_max_decode")

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor | None = None):
        self.weight = weight.contiguous()
        self.scales = scales.contiguous() if scales is not None else None
        self.decode_max_rows = DECODE_MAX_ROWS[weight.dtype]  # rows of x up to which __call__ takes decode_linear
        self._max_decode = self.decode_max_rows * self.in_features

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: str, group_size: int | None = None) -> "PackedLinear":
        """Packs a floating weight into `dtype` (int8: symmetric, per group of `group_size` inputs,
        or per output channel when None; int4: Q4_0's rule per group of `group_size` inputs, None = 32)."""
        w = weight.detach()
        if dtype == "int8":
            return cls(*ops.quantize_int8(w, group_size))
        if dtype == "int4":
            return cls(*ops.quantize_int4(w, group_size or INT4_GROUP_SIZE))
        return cls(w.to(torch.float32 if dtype == "fp32" else torch.bfloat16))

    @property
    def dtype(self) -> str:
        return _NAMES[self.weight.dtype]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1] * (2 if self.weight.dtype == torch.uint8 else 1)

    @property
    def group_size(self) -> int | None:
        """Inputs per scale (int8 / int4), None for fp32 / bf16."""
        return None if self.scales is None else self.in_features // self.scales.shape[1]

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The full weight in `dtype` (int8 / int4 dequantised)."""
        if self.weight.dtype == torch.uint8:
            return ops.dequantize_int4(self.weight, self.scales, dtype)
        if self.scales is not None:
            return ops.dequantize_int8(self.weight, self.scales, dtype)
        return self.weight if self.weight.dtype == dtype else self.weight.to(dtype)

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float32 or not bf16_prefill():
            return F.linear(x, self.dense(torch.float32))
        return F.linear(x.to(torch.bfloat16), self.dense(torch.bfloat16)).to(x.dtype)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.numel() <= self._max_decode:
            return ops.decode_linear(x, self.weight, self.scales, residual)
        y = self._gemm(x)
        return y if residual is None else y.add_(residual)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for this weight = [W_gate; W_up]."""
        if x.numel() <= self._max_decode:
            return ops.decode_linear_swiglu(x, self.weight, self.scales)
        gate, up = self._gemm(x).chunk(2, dim=-1)
        return ops.swiglu(gate, up)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of W as fp32 (an embedding lookup)."""
        return embedding_rows(ids, self.weight, self.scales)

    @staticmethod
    def cat(parts: list["PackedLinear"]) -> "PackedLinear":
        """Weights stacked along the outputs (q/k/v, gate/up): one kernel call reads them all."""
        if len({p.weight.dtype for p in parts}) != 1:
            raise ValueError("cannot stack weights of different dtypes")
        scales = None
        if parts[0].scales is not None:
            if len({p.scales.shape[1] for p in parts}) != 1:
                raise ValueError(f"cannot stack {parts[0].dtype} weights with different group sizes")
            scales = torch.cat([p.scales for p in parts])
        return PackedLinear(torch.cat([p.weight for p in parts]), scales)

    def nbytes(self) -> int:
        return self.weight.nbytes + (self.scales.nbytes if self.scales is not None else 0)
