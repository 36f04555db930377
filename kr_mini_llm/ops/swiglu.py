"""SwiGLU: silu(gate) * up, element-wise, for gate and up of the same shape and dtype.

The backward recomputes sigmoid(gate) from the saved inputs (nothing else is saved):
    grad_gate = g * up * sig * (1 + gate * (1 - sig)),   grad_up = g * silu(gate).
gate/up may be strided views (the halves of a fused gate_up projection); outputs are contiguous.
"""
import torch
import torch.nn.functional as F

from ._library import acc_dtype, ops, qualname, register_fake, register_fallback


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (fused kernel, fp32 math for bf16/fp16)."""
    return ops.swiglu(gate, up)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch SwiGLU, differentiable by autograd; computes in float32 (float64 stays)."""
    acc = acc_dtype(gate.dtype)
    return (F.silu(gate.to(acc)) * up.to(acc)).to(gate.dtype)


_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check(gate, up, op="swiglu"):
    """The CPU kernel's argument checks, with its messages (fallback and fake kernels)."""
    for name, t in (("gate", gate), ("up", up)):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{op}: {name} must be float32, bfloat16, float16 or float64, got {t.dtype}")
    if gate.shape != up.shape:
        raise ValueError(f"{op}: gate and up must have the same shape, got gate {list(gate.shape)} "
                         f"and up {list(up.shape)}")
    if gate.dtype != up.dtype:
        raise TypeError(f"{op}: gate ({gate.dtype}) and up ({up.dtype}) must have the same dtype")


def _check_backward(grad_out, gate, up):
    _check(gate, up, "swiglu_backward")
    if grad_out.shape != gate.shape:
        raise ValueError(f"swiglu_backward: grad_out must match gate {list(gate.shape)}, "
                         f"got {list(grad_out.shape)}")
    if grad_out.dtype != gate.dtype:
        raise TypeError(f"swiglu_backward: grad_out ({grad_out.dtype}) and gate ({gate.dtype}) "
                        "must have the same dtype")


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
