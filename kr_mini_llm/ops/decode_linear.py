"""Decode-time linears: y = x W^T for the few rows of a generation step, weights read once.

    decode_linear(x, weight, scales=None, residual=None)   -> x W^T (+ residual)
    decode_linear_swiglu(x, weight, scales=None)           -> silu(x Wg^T) * (x Wu^T), weight = [Wg; Wu]

x is [..., K] float32 or bfloat16; weight [M, K] float32, bfloat16 or int8. Int8 weights carry
symmetric float32 scales [M, G]: each row is split into G groups of K / G consecutive inputs and
w ~= q * scale (G = 1: one scale per output channel). Accumulation is fp32; y has x's dtype.
`quantize_int8` / `dequantize_int8` make and undo that format.

To run on the CPU's own dot products, the kernel meets low-precision weights in their precision:
with bf16 weights, x is rounded to bf16 (AVX512-BF16 CPUs); with int8 weights, x is quantized
to symmetric int8 per block of gcd(G, 128) inputs (AVX512-VNNI and AVX2 CPUs, when that block is
a whole number of vectors), as llama.cpp's q8_0 does. Elsewhere x stays fp32 and the weights are
widened. `x_format(weight_dtype, group_size)` says which applies in this build.

These ops are inference-only: they have no backward, and asking for a gradient through them
raises an error. Training uses nn.Linear (ordinary GEMMs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._library import ops, qualname, register_fake, register_fallback

WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.int8)


def _no_grad_check(op, *tensors):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is an inference-only op and has no backward; run it under "
                           "torch.no_grad()/torch.inference_mode(), or use nn.Linear to train")


def decode_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ residual), fp32 accumulation; for int8 weight, W = weight * scales per group."""
    _no_grad_check("decode_linear", x, weight, scales, residual)
    return ops.decode_linear(x, weight, scales, residual)


def decode_linear_swiglu(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x Wg^T) * (x Wu^T) where weight = [Wg; Wu] stacks the gate rows over the up rows."""
    _no_grad_check("decode_linear_swiglu", x, weight, scales)
    return ops.decode_linear_swiglu(x, weight, scales)


def x_format(weight_dtype: torch.dtype, group_size: int | None = None) -> tuple[str, int]:
    """What x becomes in the CPU kernel for these weights: ("fp32", 0), ("bf16", 0), or
    ("int8", B) with x quantized per block of B inputs (group_size: the int8 weights' group)."""
    from .. import _C

    if weight_dtype == torch.bfloat16 and _C.decode_bf16_rounds_x():
        return "bf16", 0
    if weight_dtype == torch.int8:
        if group_size is None:
            raise ValueError("x_format: int8 weights need their group_size (in_features for per-channel scales)")
        block = _C.decode_int8_x_block(int(group_size))
        if block:
            return "int8", block
    return "fp32", 0


def kernel_description(weight_dtype: str) -> str:
    """How this build computes decode_linear with 'fp32', 'bf16' or 'int8' weights (benchmarks print it)."""
    from .. import _C

    return _C.decode_linear_kernel(weight_dtype)


# -- int8 format ---------------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8: weight [M, K] -> (q int8 [M, K], scales float32 [M, K / group_size]).

    scale = max|w| / 127 over each group of `group_size` consecutive inputs (None: the whole row,
    one scale per output channel); q = round(w / scale) in [-127, 127].
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_int8: weight must be 2-D [out_features, in_features], got {list(weight.shape)}")
    M, K = weight.shape
    G = K if group_size is None else int(group_size)
    if G <= 0 or K % G != 0:
        raise ValueError(f"quantize_int8: group_size {G} does not divide in_features {K} of a weight "
                         f"{list(weight.shape)}; choose a group size that divides the input size of every "
                         "layer, or per-channel scales (group_size None)")
    finite = torch.isfinite(weight.detach())
    if not bool(finite.all()):
        r, c = (~finite).nonzero()[0].tolist()
        raise ValueError(f"quantize_int8: the weight {list(weight.shape)} holds NaN or inf (first at [{r}, {c}]), "
                         "which no int8 scale can represent; the model had diverged: quantize an earlier checkpoint")
    w = weight.detach().float().view(M, K // G, G)
    scales = w.abs().amax(-1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / safe.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q.view(M, K), scales.contiguous()


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight an int8 (q, scales) pair stands for, in `dtype`."""
    if q.dim() != 2 or scales.dim() != 2 or scales.shape[0] != q.shape[0] or (
            q.shape[1] and (scales.shape[1] < 1 or q.shape[1] % scales.shape[1])):
        raise ValueError(f"dequantize_int8: q must be [out_features, in_features] and scales [out_features, G] "
                         f"with G dividing in_features (quantize_int8's pair), got q {list(q.shape)}, "
                         f"scales {list(scales.shape)}")
    M, K = q.shape
    if K == 0:  # no inputs: no groups to divide them into
        return torch.zeros(M, 0, dtype=dtype, device=q.device)
    G = scales.shape[1]
    return (q.view(M, G, K // G).to(dtype) * scales.to(dtype).unsqueeze(-1)).view(M, K)


# -- references, fallback and fake kernels -------------------------------------------------------
def _full_weight(weight, scales, dtype):
    return dequantize_int8(weight, scales, dtype) if weight.dtype == torch.int8 else weight.to(dtype)


def decode_linear_reference(x, weight, scales=None, residual=None):
    """Pure PyTorch: float32 math (float64 inputs stay float64), result in x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.linear(x.to(acc), _full_weight(weight, scales, acc))
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(x.dtype)


def decode_linear_swiglu_reference(x, weight, scales=None):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    gate, up = F.linear(x.to(acc), _full_weight(weight, scales, acc)).chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def _check(op, x, weight, scales, residual=None, swiglu=False):
    """The CPU kernel's argument checks, with its messages (fallback and fake kernels)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{op}: x must be float32 or bfloat16, got {x.dtype}")
    if weight.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{op}: weight must be float32, bfloat16 or int8, got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D [out_features, in_features], got shape {list(weight.shape)}")
    M, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"{op}: x [..., in_features] must end in in_features = weight.size(1) = {K}, "
                         f"got x {list(x.shape)}")
    if weight.dtype == torch.int8:
        if scales is None:
            raise ValueError(f"{op}: int8 weight needs scales [out_features, groups] (float32)")
        if scales.dtype != torch.float32:
            raise TypeError(f"{op}: scales must be float32, got {scales.dtype}")
        if scales.dim() != 2 or scales.shape[0] != M or scales.shape[1] < 1 or K % scales.shape[1]:
            raise ValueError(f"{op}: scales must be [out_features, groups] = [{M}, G] with G dividing "
                             f"in_features {K}, got {list(scales.shape)}")
    elif scales is not None:
        raise ValueError(f"{op}: scales are only for int8 weights, got {weight.dtype} weight")
    if swiglu and M % 2:
        raise ValueError(f"{op}: weight must stack gate and up rows [2 * intermediate, in_features], "
                         f"got {list(weight.shape)}")
    out = (*x.shape[:-1], M // 2 if swiglu else M)
    if residual is not None:
        if tuple(residual.shape) != out:
            raise ValueError(f"{op}: residual must have the output's shape {list(out)}, got {list(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"{op}: residual ({residual.dtype}) and x ({x.dtype}) must have the same dtype")
    return out


@register_fallback("decode_linear", "dequantize+linear")
def _decode_linear_fallback(x, weight, scales=None, residual=None):
    _check("decode_linear", x, weight, scales, residual)
    return decode_linear_reference(x, weight, scales, residual).contiguous()


@register_fallback("decode_linear_swiglu", "dequantize+linear")
def _decode_linear_swiglu_fallback(x, weight, scales=None):
    _check("decode_linear_swiglu", x, weight, scales, swiglu=True)
    return decode_linear_swiglu_reference(x, weight, scales).contiguous()


@register_fake("decode_linear")
def _decode_linear_fake(x, weight, scales=None, residual=None):
    return x.new_empty(_check("decode_linear", x, weight, scales, residual))


@register_fake("decode_linear_swiglu")
def _decode_linear_swiglu_fake(x, weight, scales=None):
    return x.new_empty(_check("decode_linear_swiglu", x, weight, scales, swiglu=True))


def _inference_only(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"{name} is an inference-only op and has no backward; use nn.Linear to train")

    return backward


for _name in ("decode_linear", "decode_linear_swiglu"):
    torch.library.register_autograd(qualname(_name), _inference_only(_name), setup_context=lambda *a: None)

__all__ = ["decode_linear", "decode_linear_swiglu", "decode_linear_reference", "decode_linear_swiglu_reference",
           "quantize_int8", "dequantize_int8", "x_format", "kernel_description", "WEIGHT_DTYPES"]
