"""Decode-time linears: y = x W^T for the few rows of a generation step, weights read once.

    decode_linear(x, weight, scales=None, residual=None)   -> x W^T (+ residual)
    decode_linear_swiglu(x, weight, scales=None)           -> silu(x Wg^T) * (x Wu^T), weight = [Wg; Wu]

x is [..., K] float32 or bfloat16; weight [M, K] float32, bfloat16 or int8, or uint8 [M, K / 2]
for int4. Int8 and int4 weights carry symmetric scales [M, G] (float32 for int8, float16 for int4):
each row is split into G groups of K / G consecutive inputs and w ~= q * scale (int8: G = 1 is one
scale per output channel; int4: K / G a multiple of 32). Accumulation is fp32; y has x's dtype.
`quantize_int8` / `dequantize_int8` and `quantize_int4` / `dequantize_int4` make and undo them.

Int4 is llama.cpp's Q4_0, its rounding and its float16 scales (18 bytes per 32 weights), so an int4
weight and the q4_0 GGUF of the same matrix hold the same numbers: per group, d = m / -8 where m is
the weight of largest magnitude, q = round(w / d) in [-8, 7] (halves up, from the float32 d), and the
scale stored is d rounded to float16. A uint8
weight holds it packed: each row is K / 32 blocks of 16 bytes, byte i of a block holding input i of
the block in its low nibble and input i + 16 in its high nibble, each as q + 8 in [0, 15]. The
dtype says which format a weight is in, so one op (and its residual and SwiGLU epilogues) serves
them all.

To run on the CPU's own dot products, the kernel meets low-precision weights in their precision:
with bf16 weights, x is rounded to bf16 (AVX512-BF16 CPUs); with int8 weights, x is quantized
to symmetric int8 per block of gcd(G, 128) inputs (AVX512-VNNI and AVX2 CPUs, when that block is
a whole number of vectors; int4 weights likewise, per block of 32), as llama.cpp's q8_0
does. Elsewhere x stays fp32 and the weights are
widened. `x_format(weight_dtype, group_size)` says which applies in this build.

These ops are inference-only: they have no backward, and asking for a gradient through them
raises an error. Training uses nn.Linear (ordinary GEMMs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._library import ops, qualname, register_fake, register_fallback

WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.int8, torch.uint8)  # uint8: packed int4
INT4_BLOCK = 32  # inputs per packed int4 block; in_features and int4 group sizes are multiples of it
INT4_SCALE_DTYPE = torch.float16  # Q4_0's; int8 scales are float32
_DTYPE_NAME = {torch.float16: "float16", torch.float32: "float32"}  # as the C++ checks name them


def _no_grad_check(op, *tensors):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is an inference-only op and has no backward; run it under "
                           "torch.no_grad()/torch.inference_mode(), or use nn.Linear to train")


def decode_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ residual), fp32 accumulation; for int8 / int4 (uint8) weight, W = q * scales per group."""
    _no_grad_check("decode_linear", x, weight, scales, residual)
    return ops.decode_linear(x, weight, scales, residual)


def decode_linear_swiglu(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x Wg^T) * (x Wu^T) where weight = [Wg; Wu] stacks the gate rows over the up rows."""
    _no_grad_check("decode_linear_swiglu", x, weight, scales)
    return ops.decode_linear_swiglu(x, weight, scales)


def x_format(weight_dtype: torch.dtype, group_size: int | None = None) -> tuple[str, int]:
    """What x becomes in the CPU kernel for these weights: ("fp32", 0), ("bf16", 0), or
    ("int8", B) with x quantized per block of B inputs (group_size: the int8 or int4 (uint8)
    weights' group)."""
    from .. import _C

    if weight_dtype == torch.bfloat16 and _C.decode_bf16_rounds_x():
        return "bf16", 0
    if weight_dtype in (torch.int8, torch.uint8):
        if group_size is None:
            raise ValueError("x_format: int8/int4 weights need their group_size (in_features for per-channel scales)")
        x_block = _C.decode_int8_x_block if weight_dtype == torch.int8 else _C.decode_int4_x_block
        block = x_block(int(group_size))
        if block:
            return "int8", block
    return "fp32", 0


def kernel_description(weight_dtype: str) -> str:
    """How this build computes decode_linear with 'fp32', 'bf16', 'int8' or 'int4' weights (benchmarks print it)."""
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
    _check_finite("quantize_int8", weight)
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


def _check_finite(op, weight):
    finite = torch.isfinite(weight.detach())
    if not bool(finite.all()):
        r, c = (~finite).nonzero()[0].tolist()
        raise ValueError(f"{op}: the weight {list(weight.shape)} holds NaN or inf (first at [{r}, {c}]), "
                         "which no scale can represent; the model had diverged: quantize an earlier checkpoint")


# -- int4 format ---------------------------------------------------------------------------------
def quantize_int4(weight: torch.Tensor, group_size: int = INT4_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 (Q4_0's rule): weight [M, K] -> (packed uint8 [M, K / 2], scales float16 [M, K / G]).

    Per group of G = `group_size` consecutive inputs (a multiple of 32 dividing K): d = m / -8 with
    m the weight of largest magnitude, q = round(w / d) (halves rounded up, as Q4_0) clamped to
    [-8, 7], packed two per byte as the module docstring says; the scale is d in float16.
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_int4: weight must be 2-D [out_features, in_features], got {list(weight.shape)}")
    M, K = weight.shape
    G = int(group_size)
    if G <= 0 or G % INT4_BLOCK or K % G:
        raise ValueError(f"quantize_int4: group_size {G} must be a multiple of {INT4_BLOCK} that divides "
                         f"in_features {K} of a weight {list(weight.shape)} (int4 packs blocks of {INT4_BLOCK} "
                         "inputs)")
    _check_finite("quantize_int4", weight)
    w = weight.detach().float().view(M, K // G, G)
    idx = w.abs().argmax(-1, keepdim=True)
    d = torch.gather(w, -1, idx).squeeze(-1) / -8.0
    scales = d.to(torch.float16)
    if not bool(torch.isfinite(scales).all()):
        r, g = (~torch.isfinite(scales)).nonzero()[0].tolist()
        raise ValueError(f"quantize_int4: group {g} of row {r} holds a weight of magnitude {float(d[r, g].abs() * 8):.4g}, "
                         f"past what int4's float16 scale can hold (|w| <= {8 * torch.finfo(torch.float16).max:.0f}); "
                         "quantize this model to int8 instead")
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    u = torch.floor(w * inv.unsqueeze(-1) + 8.5).clamp_(0, 15).to(torch.uint8)  # q + 8
    return _pack_nibbles(u.view(M, K)), scales.contiguous()


def _pack_nibbles(u: torch.Tensor) -> torch.Tensor:
    M, K = u.shape
    blocks = u.view(M, K // INT4_BLOCK, 2, INT4_BLOCK // 2)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(M, K // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """q in [-8, 7] as int8 [M, K] from a packed uint8 int4 weight [M, K / 2]."""
    M, half = packed.shape
    b = packed.view(M, -1, 1, INT4_BLOCK // 2)
    u = torch.cat([b & 0x0F, b >> 4], dim=2)
    return (u.to(torch.int8) - 8).view(M, 2 * half)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight a packed int4 (packed, scales) pair stands for, in `dtype`."""
    if (packed.dim() != 2 or packed.dtype != torch.uint8 or scales.dim() != 2 or scales.shape[0] != packed.shape[0]
            or (2 * packed.shape[1]) % INT4_BLOCK or scales.shape[1] < 1
            or (2 * packed.shape[1]) % (INT4_BLOCK * scales.shape[1])):
        raise ValueError(f"dequantize_int4: packed must be uint8 [out_features, in_features / 2] with in_features "
                         f"a multiple of {INT4_BLOCK}, and scales [out_features, G] with in_features / G a multiple "
                         f"of {INT4_BLOCK} (quantize_int4's pair), got packed {packed.dtype} {list(packed.shape)}, "
                         f"scales {list(scales.shape)}")
    M, K = packed.shape[0], 2 * packed.shape[1]
    if K == 0:
        return torch.zeros(M, 0, dtype=dtype, device=packed.device)
    G = scales.shape[1]
    return (unpack_int4(packed).view(M, G, K // G).to(dtype) * scales.to(dtype).unsqueeze(-1)).view(M, K)


# -- references, fallback and fake kernels -------------------------------------------------------
def embedding_rows(ids: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `ids` of a decode weight [V, C] (fp32, bf16, int8 or int4 with its scales) as float32
    [*ids.shape, C]: the values decode_linear multiplies by (an embedding lookup of a packed table)."""
    w = F.embedding(ids, weight)
    if scales is None:
        return w.float()
    if weight.dtype == torch.uint8:
        w = unpack_int4(w.reshape(-1, w.shape[-1])).view(*ids.shape, 2 * weight.shape[1])
    s = F.embedding(ids, scales)
    return (w.float().unflatten(-1, (s.shape[-1], -1)) * s.unsqueeze(-1)).flatten(-2)


def _full_weight(weight, scales, dtype):
    if weight.dtype == torch.int8:
        return dequantize_int8(weight, scales, dtype)
    if weight.dtype == torch.uint8:
        return dequantize_int4(weight, scales, dtype)
    return weight.to(dtype)


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


def _check_weight_kind(op, weight, name="weight"):
    if weight.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, bfloat16, int8, or uint8 (int4 pairs), got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [out_features, in_features"
                         f"{' / 2' if weight.dtype == torch.uint8 else ''}], got shape {list(weight.shape)}")


def _check_scales(op, weight, scales, K, wname="weight", sname="scales"):
    """int8 / int4 weights' scales for in_features K (already matched to the weight); none for the others."""
    int4 = weight.dtype == torch.uint8
    if int4 and K % INT4_BLOCK:
        raise ValueError(f"{op}: int4 weights need in_features a multiple of {INT4_BLOCK} (they are packed "
                         f"in blocks of 32 inputs), got {K}")
    M = weight.shape[0]
    if weight.dtype in (torch.int8, torch.uint8):
        kind, stype = ("int4", torch.float16) if int4 else ("int8", torch.float32)
        if scales is None:
            raise ValueError(f"{op}: {kind} {wname} needs {sname} [out_features, groups] ({_DTYPE_NAME[stype]})")
        if scales.dtype != stype:
            raise TypeError(f"{op}: {sname} of {kind} weights must be {_DTYPE_NAME[stype]}, got {scales.dtype}")
        if scales.dim() != 2 or scales.shape[0] != M or scales.shape[1] < 1 or K % scales.shape[1]:
            raise ValueError(f"{op}: {sname} must be [out_features, groups] = [{M}, G] with G dividing "
                             f"in_features {K}, got {list(scales.shape)}")
        if int4 and (K // scales.shape[1]) % INT4_BLOCK:
            raise ValueError(f"{op}: int4 groups must be a multiple of {INT4_BLOCK} inputs, got {scales.shape[1]} "
                             f"groups of {K // scales.shape[1]} ({sname} {list(scales.shape)})")
    elif scales is not None:
        raise ValueError(f"{op}: {sname} are only for int8 and int4 weights, got {weight.dtype} {wname}")


def check_decode_weight(op, weight, scales, K, wname="weight", sname="scales"):
    """A decode weight and its scales meant for in_features K, as the CPU kernel checks them."""
    _check_weight_kind(op, weight, wname)
    int4 = weight.dtype == torch.uint8
    if (K % 2 or K // 2 != weight.shape[1]) if int4 else K != weight.shape[1]:
        raise ValueError(f"{op}: {wname} must have in_features = {K}"
                         f"{' (int4: size(1) = in_features / 2)' if int4 else ''}, got {list(weight.shape)}")
    _check_scales(op, weight, scales, K, wname, sname)


def _check(op, x, weight, scales, residual=None, swiglu=False):
    """The CPU kernel's argument checks, with its messages (fallback and fake kernels)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{op}: x must be float32 or bfloat16, got {x.dtype}")
    _check_weight_kind(op, weight)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must be [..., in_features], got a 0-d tensor")
    M, K = weight.shape[0], x.shape[-1]
    if weight.dtype == torch.uint8:
        if K % 2 or K // 2 != weight.shape[1]:
            raise ValueError(f"{op}: x [..., in_features] must end in in_features = 2 * weight.size(1) = "
                             f"2 * {weight.shape[1]} for int4 weights, got x {list(x.shape)}")
    elif K != weight.shape[1]:
        raise ValueError(f"{op}: x [..., in_features] must end in in_features = weight.size(1) = {weight.shape[1]}, "
                         f"got x {list(x.shape)}")
    _check_scales(op, weight, scales, K)
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
           "quantize_int8", "dequantize_int8", "quantize_int4", "dequantize_int4", "unpack_int4", "x_format",
           "kernel_description", "WEIGHT_DTYPES", "INT4_BLOCK"]
