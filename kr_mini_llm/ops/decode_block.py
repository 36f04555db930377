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


# ---- decode_stack: every block of a decode step in one call ------------------------------------
STACK_OP = "decode_stack"
# decode_block's arguments that decode_stack takes as per-layer lists (the rest are shared).
LAYER_ARGS = ("norm1", "qkv_weight", "qkv_scales", "q_norm", "k_norm", "k_cache", "v_cache", "o_weight",
              "o_scales", "norm2", "gate_up_weight", "gate_up_scales", "down_weight", "down_scales")


def decode_stack(x: torch.Tensor, norm1: list, qkv_weight: list, qkv_scales: list, q_norm: list, k_norm: list,
                 cos: torch.Tensor, sin: torch.Tensor, k_cache: list, v_cache: list, cache_lens: torch.Tensor,
                 num_heads: int, o_weight: list, o_scales: list, norm2: list, gate_up_weight: list,
                 gate_up_scales: list, down_weight: list, down_scales: list, eps: float) -> torch.Tensor:
    """decode_block for every layer in one call: each per-layer argument a list with one entry per
    layer (None entries where decode_block takes None), one KV cache pair per layer; x after the
    last block. One dispatch per decode step instead of one per layer; every layer is checked
    before the first cache is written."""
    _no_grad_check(STACK_OP, x, cos, sin, *(t for lst in (norm1, qkv_weight, qkv_scales, q_norm, k_norm, k_cache,
                                                          v_cache, o_weight, o_scales, norm2, gate_up_weight,
                                                          gate_up_scales, down_weight, down_scales) for t in lst))
    return ops.decode_stack(x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache, cache_lens,
                            num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales, down_weight,
                            down_scales, eps)


def _layers(args):
    """decode_stack's arguments -> (shared arguments by name, one decode_block argument tuple per layer)."""
    a = dict(zip(ARGS, args))
    n = len(a["norm1"])
    if n == 0:
        raise ValueError(f"{STACK_OP}: needs at least one layer, got empty lists")
    for name in LAYER_ARGS[1:]:
        if len(a[name]) != n:
            raise ValueError(f"{STACK_OP}: every list holds one entry per layer: norm1 has {n}, {name} has "
                             f"{len(a[name])}")
    return a, [tuple(a[k][i] if k in LAYER_ARGS else a[k] for k in ARGS) for i in range(n)]


def _check_stack(args, memory=True):
    """decode_stack's checks, every layer before any block runs (the CPU kernel's messages); `memory`:
    also that no two caches share memory (not for fake tensors, which have none)."""
    a, layers = _layers(args)
    k0 = a["k_cache"][0]
    for i, layer in enumerate(layers):
        try:
            L = _checked(layer)
        except (ValueError, TypeError) as e:  # a layer's own errors name it
            raise type(e)(f"{STACK_OP}: layer {i}: {e}") from None
        kc, vc = L["k_cache"], L["v_cache"]
        if any(c.shape != k0.shape or c.dtype != k0.dtype for c in (kc, vc)):
            raise ValueError(f"{STACK_OP}: layer {i}'s caches must be like layer 0's {list(k0.shape)} {k0.dtype} "
                             f"(one KV cache per layer, all alike), got k_cache {list(kc.shape)} {kc.dtype}, "
                             f"v_cache {list(vc.shape)} {vc.dtype}")
        Hkv, D = k0.shape[2], k0.shape[3]
        if L["qkv_weight"].shape[0] != (L["num_heads"] + 2 * Hkv) * D:
            raise ValueError(f"{STACK_OP}: layer {i}'s qkv_weight must have (num_heads + 2 Hkv) * D = "
                             f"({L['num_heads']} + 2 * {Hkv}) * {D} rows (q, k and v stacked), got "
                             f"{list(L['qkv_weight'].shape)}")
        if (L["q_norm"] is None) != (L["k_norm"] is None):
            raise ValueError(f"{STACK_OP}: layer {i}: q_norm and k_norm go together (qk_norm): pass both or neither")
        for name in ("q_norm", "k_norm"):
            w = L[name]
            if w is not None:
                check_float(w, STACK_OP, name)
                if w.dim() != 1 or w.shape[0] != D:
                    raise ValueError(f"{STACK_OP}: layer {i}'s {name} must be [D] = [{D}], got {list(w.shape)}")
    if memory:
        _check_caches_apart(a["k_cache"], a["v_cache"])
    return a, layers


def _check_caches_apart(k_cache, v_cache):
    """No two of the 2n caches share memory (layer i + 1 would write over layer i's rows)."""
    ranges = sorted((c.data_ptr(), c.data_ptr() + c.nbytes, name, i)
                    for i, pair in enumerate(zip(k_cache, v_cache)) for name, c in zip(("k_cache", "v_cache"), pair))
    for (_, end, name_a, i), (begin, _, name_b, j) in zip(ranges, ranges[1:]):
        if begin < end:
            raise ValueError(f"{STACK_OP}: layer {i}'s {name_a} and layer {j}'s {name_b} share memory: every layer "
                             "needs caches of its own (KVCache.for_model makes them)")


def decode_stack_reference(*args):
    """Pure PyTorch: decode_block_reference layer by layer."""
    _, layers = _layers(args)
    x = args[0]
    for layer in layers:
        x = decode_block_reference(x, *layer[1:])
    return x


@register_fallback(STACK_OP, "parts")
def _decode_stack_fallback(*args):
    _, layers = _check_stack(args)
    x = args[0]
    for layer in layers:  # each block by the device's own decode_block kernel (its fallback where none)
        x = ops.decode_block(x, *layer[1:])
    return x


@register_fake(STACK_OP)
def _decode_stack_fake(*args):
    a, _ = _check_stack(args, memory=False)
    return a["x"].new_empty(a["x"].shape)
