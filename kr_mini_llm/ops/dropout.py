"""Dropout with a mask hashed from (seed, element index): nothing is saved for the backward.

    dropout(x, p, training=True, seed=None) -> x * keep / (1 - p)

Element i of x (flat, row-major) is kept iff h(i) >= floor(p * 2^32), where
h(i) = mix(mix(lo(i) ^ a) + mix(hi(i) + k1)) with a = mix(k0 ^ mix(k1)), k0/k1 the low/high 32
bits of the seed, lo/hi those of i, and mix the 32-bit hash x ^= x >> 16; x *= 0x7feb352d;
x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16 (all mod 2^32). Each element is kept with probability 1 - p to
within 2^-32. seed=None draws one from torch's default CPU generator, so torch.manual_seed makes
a run repeat (and activation checkpointing, which restores that generator, recomputes the same
mask). The op is linear in x, so its backward is the same op on the gradient with the same seed:
no mask is stored. The product is taken in fp32 (double for double) and rounded once.
"""
import torch

from ._checks import check_float, check_type, check_value, dtype_name, shape_str
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback

_MASK32 = 0xFFFFFFFF
_SEED_RANGE = (torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max)


def draw_seed() -> torch.Tensor:
    """A 0-d int64 seed from torch's default CPU generator."""
    return torch.randint(*_SEED_RANGE, (), dtype=torch.int64)


def dropout(x: torch.Tensor, p: float, training: bool = True, seed: torch.Tensor | None = None) -> torch.Tensor:
    """x with each element zeroed with probability p and the rest scaled by 1 / (1 - p) (fused
    kernel on the CPU); x itself when not training or p == 0."""
    if not training or p == 0:
        return x
    return ops.dropout(x, draw_seed() if seed is None else seed, float(p))


def _mix32(v):
    """The kernel's 32-bit hash on a Python int or an int64 tensor of values in [0, 2^32)."""
    v = v ^ (v >> 16)
    v = (v * 0x7FEB352D) & _MASK32
    v = v ^ (v >> 15)
    v = (v * 0x846CA68B) & _MASK32
    return v ^ (v >> 16)


def keep_mask(numel: int, seed: torch.Tensor, p: float, device=None) -> torch.Tensor:
    """The kept elements (bool [numel]) of a call with this seed and p, in PyTorch integer ops."""
    s = int(seed.item()) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = s & _MASK32, s >> 32
    a = _mix32(k0 ^ _mix32(k1))
    i = torch.arange(numel, dtype=torch.int64, device=device)
    b = _mix32(((i >> 32) + k1) & _MASK32)
    u = _mix32((_mix32((i & _MASK32) ^ a) + b) & _MASK32)
    return u >= int(p * 4294967296.0)


def dropout_reference(x: torch.Tensor, p: float, training: bool = True,
                      seed: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch, the same mask and rounding as the kernel (float32 math; float64 stays), and
    differentiable by autograd."""
    if not training or p == 0:
        return x
    return _masked(x, draw_seed() if seed is None else seed, p)


def _masked(x, seed, p):
    _check(x, seed, p)
    acc = acc_dtype(x.dtype)
    factor = keep_mask(x.numel(), seed, p, x.device).reshape(x.shape).to(acc) * (1.0 / (1.0 - p))
    return (x.to(acc) * factor.to(acc)).to(x.dtype)


def _check(x, seed, p, op="dropout"):
    """The CPU kernel's checks, with its messages (fallback and fake kernels)."""
    check_float(x, op, "x")
    check_type(seed.dtype == torch.int64, lambda: f"{op}: seed must be int64, got {dtype_name(seed.dtype)}")
    check_value(seed.dim() == 0, lambda: f"{op}: seed must be a 0-d tensor, got {shape_str(seed)}")
    check_value(0 <= p < 1, lambda: f"{op}: p must be in [0, 1), got {p:g}")  # :g prints as the C++ check


@register_fallback("dropout", "elementwise")
def _dropout_fallback(x, seed, p):
    return _masked(x, seed, p).contiguous()  # a new tensor even at p == 0, as the kernel's


@register_fake("dropout")
def _dropout_fake(x, seed, p):
    _check(x, seed, p)
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _, seed, p = inputs
    ctx.save_for_backward(seed)
    ctx.p = p


def _backward(ctx, grad_out):
    (seed,) = ctx.saved_tensors
    return ops.dropout(grad_out, seed, ctx.p), None, None


torch.library.register_autograd(qualname("dropout"), _backward, setup_context=_setup_context)

__all__ = ["dropout", "dropout_reference", "keep_mask"]
