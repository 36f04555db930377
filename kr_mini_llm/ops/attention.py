"""Flash attention on [B, T, H, D] tensors with GQA/MQA by head groups.

q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] with Hq % Hkv == 0: query head h reads kv head
h // (Hq // Hkv). causal=True needs Tq == Tk. scale defaults to 1 / sqrt(D).
"""
import math
from typing import Optional

import torch

from ._checks import check_dim, check_float, check_same_dtype, check_value, dtype_name, shape_str
from ._device_attention import blocked_backward, blocked_lse, sdpa
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              scale: Optional[float] = None) -> torch.Tensor:
    """Softmax(scale * q k^T [+ causal mask]) v per head group; returns out [B, Tq, Hq, D]."""
    return ops.attention(q, k, v, causal, scale)[0]


def _scores(q, k, causal, scale):
    """Scaled scores [B, Hkv, G, Tq, Tk] in the accumulation dtype (masked entries -inf)."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    acc = acc_dtype(q.dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    # q head h = hk * G + g: view [B, Tq, Hkv, G, D] -> [B, Hkv, G * Tq, D]; k: [B, Hkv, D, Tk].
    qg = q.to(acc).reshape(B, Tq, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * Tq, D)
    kt = k.to(acc).permute(0, 2, 3, 1)
    s = torch.matmul(qg, kt).mul(scale).reshape(B, Hkv, G, Tq, Tk)
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    return s


def _merge_heads(x, B, Tq, Hq, D):
    """[B, Hkv, G, Tq, D] -> [B, Tq, Hq, D]."""
    return x.permute(0, 3, 1, 2, 4).reshape(B, Tq, Hq, D)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                        scale: Optional[float] = None) -> torch.Tensor:
    """Pure-PyTorch attention (explicit matmul + softmax in float32, float64 stays float64),
    differentiable by autograd; GQA by head-group indexing, K/V are never repeated."""
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    s = _scores(q, k, causal, scale)                          # [B, Hkv, G, Tq, Tk]
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p, v.to(s.dtype).transpose(1, 2).unsqueeze(2))  # [B, Hkv, G, Tq, D]
    return _merge_heads(o, B, Tq, Hq, D).to(q.dtype)


def _check(q, k, v, causal, op="attention"):
    """The CPU kernel's checks of q, k, v (check_qkv), with its messages."""
    check_dim(q, 4, op, "q", "[B, Tq, Hq, D]")
    check_dim(k, 4, op, "k", "[B, Tk, Hkv, D]")
    check_dim(v, 4, op, "v", "[B, Tk, Hkv, D]")
    check_float(q, op, "q")
    check_same_dtype(k, "k", q, "q", op)
    check_same_dtype(v, "v", q, "q", op)
    check_value(k.shape == v.shape, lambda: f"{op}: k and v must have the same shape [B, Tk, Hkv, D], "
                                            f"got k {shape_str(k)} and v {shape_str(v)}")
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    check_value(k.shape[0] == B, lambda: f"{op}: k/v must be [B, Tk, Hkv, D] with B = {B} as in q "
                                         f"{shape_str(q)}, got {shape_str(k)}")
    check_value(k.shape[3] == D, lambda: f"{op}: head_dim of k/v ({k.shape[3]}) must equal head_dim of q "
                                         f"({D}): q {shape_str(q)}, k {shape_str(k)}")
    check_value(D >= 1, lambda: f"{op}: head_dim must be >= 1, got q {shape_str(q)}")
    check_value(Hkv >= 1 and Hq % Hkv == 0,
                lambda: f"{op}: the number of query heads Hq = {Hq} must be a multiple of the number of kv "
                        f"heads Hkv = {Hkv} (q {shape_str(q)}, k {shape_str(k)})")
    check_value(not causal or Tq == Tk, lambda: f"{op}: causal=True needs Tq == Tk, got Tq = {Tq} and "
                                                f"Tk = {Tk} (use causal=False for Tq != Tk)")


def _check_backward(grad_out, q, k, v, out, lse, causal):
    """The CPU kernel's checks of the backward's arguments, with its messages."""
    op = "attention_backward"
    _check(q, k, v, causal, op)
    check_value(grad_out.shape == q.shape, lambda: f"{op}: grad_out must be [B, Tq, Hq, D] = {shape_str(q)} "
                                                   f"like q, got {shape_str(grad_out)}")
    check_value(out.shape == q.shape, lambda: f"{op}: out must be [B, Tq, Hq, D] = {shape_str(q)} like q, "
                                              f"got {shape_str(out)}")
    check_same_dtype(grad_out, "grad_out", q, "q", op)
    check_same_dtype(out, "out", q, "q", op)
    B, Tq, Hq, _ = q.shape
    acc = acc_dtype(q.dtype)
    check_value(lse.shape == (B, Hq, Tq) and lse.dtype == acc,
                lambda: f"{op}: lse must be the [B, Hq, Tq] = [{B}, {Hq}, {Tq}] {dtype_name(acc)} tensor "
                        f"saved by the forward, got {shape_str(lse)} {dtype_name(lse.dtype)}")


@register_fallback("attention", "sdpa")
def _attention_fallback(q, k, v, causal, scale):
    _check(q, k, v, causal)
    B, Tq, Hq, D = q.shape
    acc = acc_dtype(q.dtype)
    if k.shape[1] == 0:  # no keys: softmax over nothing, out 0 and lse -inf (as the CPU kernel)
        return q.new_zeros(q.shape), q.new_full((B, Hq, Tq), float("-inf"), dtype=acc)
    return sdpa(q, k, v, causal, scale), blocked_lse(q, k, v, causal, scale, acc)


@register_fallback("attention_backward", "sdpa")
def _attention_backward_fallback(grad_out, q, k, v, out, lse, causal, scale):
    _check_backward(grad_out, q, k, v, out, lse, causal)
    if k.shape[1] == 0:
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    return blocked_backward(grad_out, q, k, v, lse, causal, scale)  # out is recomputed, exactly


@register_fake("attention")
def _attention_fake(q, k, v, causal, scale):
    _check(q, k, v, causal)
    B, Tq, Hq, D = q.shape
    return (q.new_empty((B, Tq, Hq, D)), q.new_empty((B, Hq, Tq), dtype=acc_dtype(q.dtype)))


@register_fake("attention_backward")
def _attention_backward_fake(grad_out, q, k, v, out, lse, causal, scale):
    _check_backward(grad_out, q, k, v, out, lse, causal)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    gq, gk, gv = ops.attention_backward(grad_out, q, k, v, out, lse, ctx.causal, ctx.scale)
    return gq, gk, gv, None, None


torch.library.register_autograd(qualname("attention"), _backward, setup_context=_setup_context)
