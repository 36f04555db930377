"""One Transformer block of a decode step in one call.

    decode_block(x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache,
                 cache_lens, num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales,
                 down_weight, down_scales, eps) -> x after the block

is, for x [B, S, C] (float32 or bfloat16):

    a = decode_attention_step(decode_linear(rms_norm(x, norm1), qkv_weight, qkv_scales), q_norm, k_norm,
                              eps, cos, sin, k_cache, v_cache, cache_lens, num_heads)
    x = decode_linear(a, o_weight, o_scales, residual=x)
    x = decode_linear(decode_linear_swiglu(rms_norm(x, norm2), gate_up_weight, gate_up_scales),
                      down_weight, down_scales, residual=x)

with every weight as decode_linear takes it (fp32, bf16, int8 or int4, the last two with their
scales). The CPU kernel runs those ops' own kernels as C++ functions: the same bits, one dispatch
instead of seven. Like decode_attention_step it appends to the caches and leaves cache_lens to the
caller; it checks every argument before it writes them. Inference-only (no backward).
"""
from typing import Optional

import torch

from ._checks import check_float
from ._library import ops, register_fake, register_fallback
from .decode_attention import _check_caches, decode_attention_step_reference
from .decode_linear import _no_grad_check, check_decode_weight, decode_linear_reference, decode_linear_swiglu_reference
from .rms_norm import rms_norm_reference

OP = "decode_block"
# The argument names in the op's order (the reference and the fallback take them so).
ARGS = ("x", "norm1", "qkv_weight", "qkv_scales", "q_norm", "k_norm", "cos", "sin", "k_cache", "v_cache",
        "cache_lens", "num_heads", "o_weight", "o_scales", "norm2", "gate_up_weight", "gate_up_scales",
        "down_weight", "down_scales", "eps")


def decode_block(x: torch.Tensor, norm1: torch.Tensor, qkv_weight: torch.Tensor, qkv_scales: Optional[torch.Tensor],
                 q_norm: Optional[torch.Tensor], k_norm: Optional[torch.Tensor], cos: torch.Tensor,
                 sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor,
                 num_heads: int, o_weight: torch.Tensor, o_scales: Optional[torch.Tensor], norm2: torch.Tensor,
                 gate_up_weight: torch.Tensor, gate_up_scales: Optional[torch.Tensor], down_weight: torch.Tensor,
                 down_scales: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """x [B, S, C] after one block of a decode step (see the module docstring)."""
    _no_grad_check(OP, x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache, o_weight,
                   o_scales, norm2, gate_up_weight, gate_up_scales, down_weight, down_scales)
    return ops.decode_block(x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache,
                            cache_lens, num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales,
                            down_weight, down_scales, eps)


def _block(parts, x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache, cache_lens,
           num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales, down_weight, down_scales, eps):
    """decode_block from its parts (rms_norm, linear, step, swiglu linear): the reference passes the
    references, the fallback the ops."""
    rms_norm, linear, step, swiglu = parts
    qkv = linear(rms_norm(x, norm1, eps), qkv_weight, qkv_scales, None)
    att = step(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads)
    x = linear(att, o_weight, o_scales, x)
    return linear(swiglu(rms_norm(x, norm2, eps), gate_up_weight, gate_up_scales), down_weight, down_scales, x)


def decode_block_reference(x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache, cache_lens,
                           num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales, down_weight,
                           down_scales, eps):
    """Pure PyTorch: the references of the parts, in the op's order (float32 math; float64 stays)."""
    parts = (rms_norm_reference, decode_linear_reference, decode_attention_step_reference,
             decode_linear_swiglu_reference)
    return _block(parts, x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache, cache_lens,
                  num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales, down_weight, down_scales, eps)


def _check_block(x, norm1, qkv_weight, qkv_scales, k_cache, v_cache, num_heads, o_weight, o_scales, norm2,
                 gate_up_weight, gate_up_scales, down_weight, down_scales, eps):
    """The CPU kernel's checks before any part runs, with its messages (fallback and fake kernels);
    the parts check the rest (qkv's width, cos/sin, the cache rows) before the caches are written."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{OP}: x must be float32 or bfloat16, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{OP}: x must be 3-D [B, S, C], got shape {list(x.shape)}")
    C = x.shape[2]
    for name, w in (("norm1", norm1), ("norm2", norm2)):
        check_float(w, OP, name)
        if w.dim() != 1 or w.shape[0] != C:
            raise ValueError(f"{OP}: {name} must be [C] = [{C}] (x's hidden size), got {list(w.shape)}")
    if not eps >= 0:
        raise ValueError(f"{OP}: eps must be >= 0, got {eps}")
    _check_caches(OP, k_cache, v_cache)
    D = k_cache.shape[3]
    if num_heads <= 0 or num_heads * D > 2**63 - 1:
        raise ValueError(f"{OP}: num_heads = {num_heads} must be positive, with num_heads * D (D = {D}) within int64")
    check_decode_weight(OP, qkv_weight, qkv_scales, C, "qkv_weight", "qkv_scales")
    check_decode_weight(OP, o_weight, o_scales, num_heads * D, "o_weight", "o_scales")
    _check_out_features(o_weight, C, "o_weight")
    check_decode_weight(OP, gate_up_weight, gate_up_scales, C, "gate_up_weight", "gate_up_scales")
    if gate_up_weight.shape[0] % 2:
        raise ValueError(f"{OP}: gate_up_weight must stack gate and up rows [2 * intermediate, C], "
                         f"got {list(gate_up_weight.shape)}")
    check_decode_weight(OP, down_weight, down_scales, gate_up_weight.shape[0] // 2, "down_weight", "down_scales")
    _check_out_features(down_weight, C, "down_weight")


def _check_out_features(w, C, name):
    if w.shape[0] != C:
        raise ValueError(f"{OP}: {name} must have out_features = C = {C} (x's hidden size), got {list(w.shape)}")


def _checked(args):
    a = dict(zip(ARGS, args))
    _check_block(*(a[n] for n in ("x", "norm1", "qkv_weight", "qkv_scales", "k_cache", "v_cache", "num_heads",
                                  "o_weight", "o_scales", "norm2", "gate_up_weight", "gate_up_scales",
                                  "down_weight", "down_scales", "eps")))
    return a


@register_fallback(OP, "parts")
def _decode_block_fallback(*args):
    _checked(args)
    # The parts through the dispatcher: the device's own kernel of each (its fallback where none).
    parts = (lambda x, w, e: ops.rms_norm(x, w, e)[0], ops.decode_linear, ops.decode_attention_step,
             ops.decode_linear_swiglu)
    return _block(parts, *args)


@register_fake(OP)
def _decode_block_fake(*args):
    a = _checked(args)
    return a["x"].new_empty(a["x"].shape)
