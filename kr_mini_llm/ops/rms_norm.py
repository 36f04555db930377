"""RMSNorm: y = x / sqrt(mean(x^2, -1) + eps) * weight."""
import torch

from ._checks import check_float, check_same_dtype, check_value, dtype_name, shape_str
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., C] with weight [C] (fused kernel, fp32 accumulation)."""
    return ops.rms_norm(x, weight, eps)[0]


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pure-PyTorch RMSNorm, differentiable by autograd; accumulates in float32 (float64 stays)."""
    xf = x.to(acc_dtype(x.dtype))
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(xf.dtype)).to(x.dtype)


def _check_inputs(x, weight, op="rms_norm"):
    """The CPU kernel's checks of x and weight, with its messages (both directions say rms_norm)."""
    check_float(x, op, "x")
    check_float(weight, op, "weight")
    check_value(x.dim() >= 1, lambda: f"{op}: x must have at least 1 dim [..., C], got a scalar")
    check_value(weight.dim() == 1 and weight.shape[0] == x.shape[-1],
                lambda: f"{op}: weight must be [C] = [{x.shape[-1]}] to match x {shape_str(x)}, "
                        f"got {shape_str(weight)}")


def _check(x, weight, eps):
    _check_inputs(x, weight)
    check_value(eps >= 0, lambda: f"rms_norm: eps must be >= 0, got {eps}")


def _check_backward(grad_y, x, weight, rstd):
    _check_inputs(x, weight)
    check_value(grad_y.shape == x.shape, lambda: f"rms_norm_backward: grad_y must match x {shape_str(x)}, "
                                                 f"got {shape_str(grad_y)}")
    check_same_dtype(grad_y, "grad_y", x, "x", "rms_norm_backward")
    acc = acc_dtype(x.dtype)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    check_value(rstd.numel() == rows and rstd.dtype == acc,
                lambda: f"rms_norm_backward: rstd must be the [{rows}] {dtype_name(acc)} tensor saved by the "
                        f"forward, got {shape_str(rstd)} {dtype_name(rstd.dtype)}")


# PyTorch's fused RMSNorm (what F.rms_norm runs on CUDA, MPS and XPU) returns rstd as well.
_FUSED = getattr(torch.ops.aten, "_fused_rms_norm", None)


@register_fallback("rms_norm", "fused_rms_norm")
def _rms_norm_fallback(x, weight, eps):
    _check(x, weight, eps)
    acc = acc_dtype(x.dtype)
    if _FUSED is not None and weight.dtype == x.dtype and x.shape[-1] > 0:
        y, rstd = _FUSED(x, [x.shape[-1]], weight, eps)
        return y, rstd.squeeze(-1).to(acc)
    xf = x.to(acc)  # a weight of another dtype (or a torch without the fused op): spelled out
    rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    y = xf * rstd.unsqueeze(-1) * weight.to(xf.dtype)
    return y.to(x.dtype), rstd


@register_fallback("rms_norm_backward", "fused_rms_norm")
def _rms_norm_backward_fallback(grad_y, x, weight, rstd):
    _check_backward(grad_y, x, weight, rstd)
    xf = x.to(rstd.dtype)
    g = grad_y.to(rstd.dtype)
    w = weight.to(rstd.dtype)
    r = rstd.unsqueeze(-1)
    dot = (g * w * xf).sum(-1, keepdim=True)
    grad_x = r * g * w - r.pow(3) / x.shape[-1] * dot * xf
    grad_w = (g * xf * r).reshape(-1, x.shape[-1]).sum(0)
    return grad_x.to(x.dtype), grad_w.to(weight.dtype)


@register_fake("rms_norm")
def _rms_norm_fake(x, weight, eps):
    _check(x, weight, eps)
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=acc_dtype(x.dtype))


@register_fake("rms_norm_backward")
def _rms_norm_backward_fake(grad_y, x, weight, rstd):
    _check_backward(grad_y, x, weight, rstd)
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _backward(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_w = ops.rms_norm_backward(grad_y, x, weight, rstd)
    return grad_x, grad_w, None


torch.library.register_autograd(qualname("rms_norm"), _backward, setup_context=_setup_context)
