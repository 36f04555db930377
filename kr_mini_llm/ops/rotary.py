"""Rotary position embedding (RoPE), rotate-half convention of HF Llama/Qwen3.

x [B, T, H, D] (D even), cos/sin [T, D/2] (shared by the batch) or [B, T, D/2] (per-sequence
positions), as built by `rope_tables`:
    out[..., :D/2] = x1 * cos - x2 * sin,   out[..., D/2:] = x2 * cos + x1 * sin.
The tables may be float32 while x is bfloat16/float16 (the kernel computes in float32); otherwise
they have x's dtype. x may be a strided view (q/k split from a fused projection); the output is
contiguous. The backward is the inverse rotation. The tables get NO gradient: they are
functions of positions, not parameters; a cos/sin that requires grad gets None.
"""
import torch

from ._checks import check_dim, check_float, check_same_dtype, check_type, check_value, dtype_name, shape_str
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback, takes_fallback
from .rope import rope_inv_freq, rope_tables  # noqa: F401  (re-exported)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Applies RoPE to x [B, T, H, D] with cos/sin [T, D/2] or [B, T, D/2] (fused kernel)."""
    if torch.compiler.is_compiling() and takes_fallback("rotary", x.device):
        # Compiled on a device without the kernel: the fallback's element-wise math in the graph
        # (autograd differentiates it), so Inductor fuses it with its neighbours; an op call would
        # stay an opaque kernel between them.
        return _rotary_fallback(x, cos.detach(), sin.detach())
    return ops.rotary(x, cos, sin)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch RoPE, differentiable by autograd; computes in float32 (float64 stays)."""
    acc = acc_dtype(x.dtype)
    c = cos.to(acc).unsqueeze(-2)  # [T, 1, D/2] or [B, T, 1, D/2]: broadcast over heads
    s = sin.to(acc).unsqueeze(-2)
    x1, x2 = x.to(acc).chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def _check(x, cos, sin, op="rotary", xname="x"):
    """The CPU kernel's argument checks, with its messages (fallback and fake kernels)."""
    for name, t in ((xname, x), ("cos", cos), ("sin", sin)):
        check_float(t, op, name)
    check_dim(x, 4, op, xname, "[B, T, H, D]")
    B, T, _, D = x.shape
    check_value(D % 2 == 0, lambda: f"{op}: {xname} [B, T, H, D] must have an even head_dim D, "
                                    f"got shape {shape_str(x)}")
    check_value(cos.shape == sin.shape, lambda: f"{op}: cos and sin must have the same shape, got cos "
                                                f"{shape_str(cos)} and sin {shape_str(sin)}")
    check_value(tuple(cos.shape) in ((T, D // 2), (B, T, D // 2)),
                lambda: f"{op}: cos/sin must be [T, D/2] = [{T}, {D // 2}] or [B, T, D/2] = "
                        f"[{B}, {T}, {D // 2}] for {xname} {shape_str(x)}, got {shape_str(cos)}")
    check_same_dtype(cos, "cos", sin, "sin", op)
    check_type(cos.dtype in (x.dtype, torch.float32),
               lambda: f"{op}: cos/sin must be float32 or {xname}'s dtype ({dtype_name(x.dtype)}), "
                       f"got {dtype_name(cos.dtype)}")


def _rotate(x, cos, sin):
    return rotary_reference(x, cos, sin).contiguous()


@register_fallback("rotary", "elementwise")
def _rotary_fallback(x, cos, sin):
    _check(x, cos, sin)
    return _rotate(x, cos, sin)


@register_fallback("rotary_backward", "elementwise")
def _rotary_backward_fallback(grad_out, cos, sin):
    _check(grad_out, cos, sin, "rotary_backward", "grad_out")
    return _rotate(grad_out, cos, -sin.to(acc_dtype(grad_out.dtype)))


@register_fake("rotary")
def _rotary_fake(x, cos, sin):
    _check(x, cos, sin)
    return x.new_empty(x.shape)


@register_fake("rotary_backward")
def _rotary_backward_fake(grad_out, cos, sin):
    _check(grad_out, cos, sin, "rotary_backward", "grad_out")
    return grad_out.new_empty(grad_out.shape)


def _setup_context(ctx, inputs, output):
    _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, grad_out):
    cos, sin = ctx.saved_tensors
    # The tables get no gradient (see the module doc).
    return ops.rotary_backward(grad_out, cos, sin), None, None


def _double_backward(ctx, grad_grad_x):
    cos, sin = ctx.saved_tensors
    # rotary_backward is the inverse rotation, a linear map: its adjoint is the forward rotation.
    return ops.rotary(grad_grad_x, cos, sin), None, None


torch.library.register_autograd(qualname("rotary"), _backward, setup_context=_setup_context)
torch.library.register_autograd(qualname("rotary_backward"), _double_backward, setup_context=_setup_context)

__all__ = ["rotary", "rotary_reference", "rope_tables", "rope_inv_freq"]
