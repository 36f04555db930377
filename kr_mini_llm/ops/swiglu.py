"""SwiGLU: silu(gate) * up, element-wise, for gate and up of the same shape and dtype.

The backward recomputes sigmoid(gate) from the saved inputs (nothing else is saved):
    grad_gate = g * up * sig * (1 + gate * (1 - sig)),   grad_up = g * silu(gate).
gate/up may be strided views (the halves of a fused gate_up projection); outputs are contiguous.
"""
import torch
import torch.nn.functional as F

from ._checks import check_float, check_same_dtype, check_value, shape_str
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback, takes_fallback


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (fused kernel, fp32 math for bf16/fp16)."""
    if torch.compiler.is_compiling() and takes_fallback("swiglu", gate.device):
        # Compiled on a device without the kernel: the element-wise math in the graph, for Inductor
        # to fuse with its neighbours (as rotary does).
        return _swiglu_fallback(gate, up)
    return ops.swiglu(gate, up)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch SwiGLU, differentiable by autograd; computes in float32 (float64 stays)."""
    acc = acc_dtype(gate.dtype)
    return (F.silu(gate.to(acc)) * up.to(acc)).to(gate.dtype)


def _check(gate, up, op="swiglu"):
    """The CPU kernel's argument checks, with its messages (fallback and fake kernels)."""
    check_float(gate, op, "gate")
    check_float(up, op, "up")
    check_value(gate.shape == up.shape, lambda: f"{op}: gate and up must have the same shape, got gate "
                                                f"{shape_str(gate)} and up {shape_str(up)}")
    check_same_dtype(gate, "gate", up, "up", op)


def _check_backward(grad_out, gate, up):
    op = "swiglu_backward"
    _check(gate, up, op)
    check_value(grad_out.shape == gate.shape, lambda: f"{op}: grad_out must match gate {shape_str(gate)}, "
                                                      f"got {shape_str(grad_out)}")
    check_same_dtype(grad_out, "grad_out", gate, "gate", op)


@register_fallback("swiglu", "elementwise")
def _swiglu_fallback(gate, up):
    _check(gate, up)
    return swiglu_reference(gate, up).contiguous()


@register_fallback("swiglu_backward", "elementwise")
def _swiglu_backward_fallback(grad_out, gate, up):
    _check_backward(grad_out, gate, up)
    acc = acc_dtype(gate.dtype)
    g, a, u = grad_out.to(acc), gate.to(acc), up.to(acc)
    sig = torch.sigmoid(a)
    grad_gate = g * u * sig * (1 + a * (1 - sig))
    grad_up = g * a * sig
    return grad_gate.to(gate.dtype).contiguous(), grad_up.to(gate.dtype).contiguous()


@register_fake("swiglu")
def _swiglu_fake(gate, up):
    _check(gate, up)
    return gate.new_empty(gate.shape)


@register_fake("swiglu_backward")
def _swiglu_backward_fake(grad_out, gate, up):
    _check_backward(grad_out, gate, up)
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape)


def _setup_context(ctx, inputs, output):
    gate, up = inputs
    ctx.save_for_backward(gate, up)


def _backward(ctx, grad_out):
    gate, up = ctx.saved_tensors
    grad_gate, grad_up = ops.swiglu_backward(grad_out, gate, up)
    return grad_gate, grad_up


torch.library.register_autograd(qualname("swiglu"), _backward, setup_context=_setup_context)

__all__ = ["swiglu", "swiglu_reference"]
