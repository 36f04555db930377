"""LM head + cross entropy, fused and chunked: the [N, V] logits never exist at once.

`linear_cross_entropy(hidden, weight, targets)` equals
`F.cross_entropy(F.linear(hidden, weight), targets)` computed in the accumulation dtype
(fp32; fp64 for fp64 inputs), with two documented differences:

* the loss is returned in the accumulation dtype (fp32 for bf16/fp16 inputs), not in the
  dtype of the logits;
* reduction="mean" over a batch whose every target is `ignore_index` gives a loss of 0 with
  zero gradients (F.cross_entropy gives NaN), so an SFT batch that is all prompt does not
  poison the parameters.

Paths: for reduction "mean"/"sum" with grad enabled and hidden or weight requiring grad, the
`linear_cross_entropy_and_grad` op computes the loss and its gradients in one chunked pass
(3 GEMMs, like eager F.linear + F.cross_entropy forward+backward, against the 4 of a forward
that saves only lse and a backward that recomputes the logits); the autograd backward only
scales them by the incoming gradient (no double backward). Otherwise (reduction "none", or
no gradient wanted) `linear_cross_entropy` gives per-row losses and lse, and its backward
`linear_cross_entropy_backward` recomputes the logits chunk by chunk.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import check_dim, check_float, check_type, check_value, dtype_name, shape_str
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback

_REDUCTIONS = ("mean", "sum", "none")
# Default chunk (rows): 1/8 of N, and at least ~32 MB of fp32 logits, within [16, 4096] rows.
# Each chunk costs a pass over the [V, C] weight in each GEMM and a read-modify-write of the
# fp32 [V, C] grad_weight accumulator, so small chunks are slow on the CPU (measured at
# N=8192, C=768, V=32000, bf16, 2 threads: 64 rows ~4x and 256 rows ~2x the time of 1024
# rows); 1/8 of N keeps the chunk's logits at 1/8 of eager's [N, V] logits, which holds peak
# memory well under eager's.
_CHUNK_BYTES = 32 << 20
_MIN_ROWS, _MAX_ROWS = 16, 4096


def default_chunk_size(n: int, vocab: int) -> int:
    """Rows per chunk when chunk_size=None: max(n / 8, ~32 MB of fp32 logits), in [16, 4096]."""
    rows = max(n // 8, _CHUNK_BYTES // (4 * max(vocab, 1)))
    rows = max(_MIN_ROWS, min(_MAX_ROWS, rows))
    return max(1, min(rows, n))


@torch.compiler.assume_constant_result  # a fact of the machine, decided (and timed) once, outside any graph
def _bf16_gemms_pay() -> bool:
    from ..device import bf16_pays_here

    return bf16_pays_here()[0]


def gemm_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the op multiplies in: the input's, except bf16 on a CPU whose bf16 GEMMs are no
    faster than fp32 ones (emulated bf16, or AVX512-BF16 without AMX on some CPUs; the measured
    rule of device.bf16_matmuls_pay), where fp32 is both faster and more precise."""
    if hidden.dtype == torch.bfloat16 and hidden.device.type == "cpu" and not _bf16_gemms_pay():
        return torch.float32
    return hidden.dtype


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, reduction: str = "mean",
                         chunk_size: Optional[int] = None) -> torch.Tensor:
    """Cross entropy of `hidden @ weight.T` against `targets`, without materialising the logits.

    hidden [..., C], weight [V, C] (the LM head or tied embedding), targets [...] int64 class
    indices in [0, V) or `ignore_index`. reduction: "mean" (over non-ignored targets; 0 when
    there are none), "sum" or "none" (a loss per target, 0 where ignored, shaped like targets).
    The result is in the accumulation dtype (float32; float64 for float64 inputs).
    chunk_size: rows per chunk (None: `default_chunk_size`, about N / 8).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if hidden.dim() < 1:
        raise ValueError("linear_cross_entropy: hidden must be [..., C], got a scalar")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"linear_cross_entropy: targets must have shape hidden.shape[:-1] = "
                         f"{tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}")
    C = hidden.shape[-1]
    h2 = hidden.reshape(-1, C)
    t1 = targets.reshape(-1)
    dtype = gemm_dtype(hidden)
    if dtype != hidden.dtype and weight.dtype in (hidden.dtype, dtype):  # autograd casts the gradients back
        h2, weight = h2.to(dtype), (weight if weight.dtype == dtype else weight.to(dtype))
    vocab = weight.shape[0] if weight.dim() == 2 else 1
    if chunk_size is None:
        chunk_size = default_chunk_size(h2.shape[0], vocab)
    if reduction != "none" and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, _, _ = ops.linear_cross_entropy_and_grad(h2, weight, t1, ignore_index, chunk_size,
                                                       reduction == "mean", hidden.requires_grad,
                                                       weight.requires_grad)
        return loss
    losses, _ = ops.linear_cross_entropy(h2, weight, t1, ignore_index, chunk_size)
    if reduction == "none":
        return losses.reshape(targets.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (t1 != ignore_index).sum().clamp(min=1).to(losses.dtype)


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """F.linear + F.cross_entropy in the accumulation dtype (differentiable; the test oracle).

    Same semantics as `linear_cross_entropy`, including a 0 mean when every target is ignored.
    """
    acc = acc_dtype(hidden.dtype)
    logits = F.linear(hidden.to(acc), weight.to(acc))
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             ignore_index=ignore_index, reduction="none")
    if reduction == "none":
        return losses.reshape(targets.shape)
    if reduction == "sum":
        return losses.sum()
    n = (targets != ignore_index).sum().clamp(min=1)
    return losses.sum() / n.to(acc)


# ---- argument checks: the CPU kernel's, with its messages (fallback and fake kernels) ----

def _check(hidden, weight, targets, chunk_size, op):
    check_float(hidden, op, "hidden")
    check_float(weight, op, "weight")
    # weight may also be in hidden's accumulation dtype (fp32 master weights under autocast).
    acc = acc_dtype(hidden.dtype)
    check_type(weight.dtype in (hidden.dtype, acc),
               lambda: f"{op}: hidden ({dtype_name(hidden.dtype)}) and weight ({dtype_name(weight.dtype)}) "
                       "must have the same dtype"
                       + (f", or weight the accumulation dtype {dtype_name(acc)}" if acc != hidden.dtype else ""))
    check_dim(hidden, 2, op, "hidden", "[N, C]")
    check_value(weight.dim() == 2 and weight.shape[1] == hidden.shape[1],
                lambda: f"{op}: weight must be [V, C] with C = {hidden.shape[1]} to match hidden "
                        f"{shape_str(hidden)}, got {shape_str(weight)}")
    check_value(weight.shape[0] >= 1, lambda: f"{op}: weight must have at least one row (V >= 1), got "
                                              f"{shape_str(weight)}")
    check_type(targets.dtype == torch.int64,
               lambda: f"{op}: targets must be int64 class indices, got {dtype_name(targets.dtype)}")
    check_value(targets.dim() == 1 and targets.shape[0] == hidden.shape[0],
                lambda: f"{op}: targets must be [N] = [{hidden.shape[0]}] to match hidden {shape_str(hidden)}, "
                        f"got {shape_str(targets)}")
    check_value(chunk_size >= 1, lambda: f"{op}: chunk_size must be >= 1, got {chunk_size}")


def _check_backward(grad_losses, hidden, weight, targets, lse, chunk_size):
    op = "linear_cross_entropy_backward"
    _check(hidden, weight, targets, chunk_size, op)
    check_float(grad_losses, op, "grad_losses")
    N, acc = hidden.shape[0], acc_dtype(hidden.dtype)
    check_value(grad_losses.dim() == 1 and grad_losses.shape[0] == N,
                lambda: f"{op}: grad_losses must be [N] = [{N}], got {shape_str(grad_losses)}")
    check_value(lse.dim() == 1 and lse.shape[0] == N and lse.dtype == acc,
                lambda: f"{op}: lse must be the [N] = [{N}] {dtype_name(acc)} tensor saved by the forward, "
                        f"got {shape_str(lse)} {dtype_name(lse.dtype)}")


def _check_targets(targets, vocab, ignore_index, op):
    """Every target a class in [0, V) or ignore_index (reads the values: fallback kernels only)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: targets must be class indices in [0, V) = [0, {vocab}) or ignore_index "
                         f"({ignore_index}), got targets[{i}] = {int(targets[i])}")


# ---- pure-PyTorch kernels for backends without a native one (chunked like the CPU kernel) ----

def _chunk_logits(hidden, w_acc, s, e):
    return hidden[s:e].to(w_acc.dtype) @ w_acc.T


def _chunk_grad_logits(logits, lse, t, ignore_index, scale):
    """scale * (softmax - onehot), zero rows where ignored. scale: [rows] or a float."""
    valid = t != ignore_index
    g = logits.sub_(lse.unsqueeze(1)).exp_()  # in place: one chunk of logits at a time
    g.scatter_add_(1, torch.where(valid, t, 0).unsqueeze(1),
                   torch.full((g.shape[0], 1), -1.0, dtype=g.dtype, device=g.device))
    scale = scale if isinstance(scale, torch.Tensor) else torch.full_like(lse, scale)
    return g.mul_(torch.where(valid, scale, 0).unsqueeze(1))


@register_fallback("linear_cross_entropy", "chunked")
def _linear_cross_entropy_fallback(hidden, weight, targets, ignore_index, chunk_size):
    op = "linear_cross_entropy"
    _check(hidden, weight, targets, chunk_size, op)
    _check_targets(targets, weight.shape[0], ignore_index, op)
    return _losses_and_lse(hidden, weight, targets, ignore_index, chunk_size)


def _losses_and_lse(hidden, weight, targets, ignore_index, chunk_size):
    """Per-row losses and lse [N], one chunk of logits at a time."""
    acc = acc_dtype(hidden.dtype)
    w = weight.to(acc)
    N = hidden.shape[0]
    losses = hidden.new_empty(N, dtype=acc)
    lse = hidden.new_empty(N, dtype=acc)
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        logits = _chunk_logits(hidden, w, s, e)
        t = targets[s:e]
        valid = t != ignore_index
        picked = logits.gather(1, torch.where(valid, t, 0).unsqueeze(1)).squeeze(1)
        # log-sum-exp in place (torch.logsumexp would hold a second chunk)
        m = logits.amax(1).clamp_min_(torch.finfo(acc).min)
        lse[s:e] = logits.sub_(m.unsqueeze(1)).exp_().sum(1).log_().add_(m)
        losses[s:e] = torch.where(valid, lse[s:e] - picked, 0)
        del logits  # before the next chunk's: one chunk of logits at a time
    return losses, lse


@register_fallback("linear_cross_entropy_backward", "chunked")
def _linear_cross_entropy_backward_fallback(grad_losses, hidden, weight, targets, lse, ignore_index,
                                            chunk_size):
    _check_backward(grad_losses, hidden, weight, targets, lse, chunk_size)
    _check_targets(targets, weight.shape[0], ignore_index, "linear_cross_entropy_backward")
    acc = acc_dtype(hidden.dtype)
    w = weight.to(acc)
    N = hidden.shape[0]
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    gl = grad_losses.to(acc)
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        g = _chunk_grad_logits(_chunk_logits(hidden, w, s, e), lse[s:e], targets[s:e], ignore_index, gl[s:e])
        grad_hidden[s:e] = (g @ w).to(hidden.dtype)
        grad_weight += g.T @ hidden[s:e].to(acc)
        del g
    return grad_hidden, grad_weight.to(weight.dtype)


@register_fallback("linear_cross_entropy_and_grad", "chunked")
def _linear_cross_entropy_and_grad_fallback(hidden, weight, targets, ignore_index, chunk_size, mean,
                                            need_grad_hidden, need_grad_weight):
    op = "linear_cross_entropy_and_grad"
    _check(hidden, weight, targets, chunk_size, op)
    _check_targets(targets, weight.shape[0], ignore_index, op)
    acc = acc_dtype(hidden.dtype)
    losses, lse = _losses_and_lse(hidden, weight, targets, ignore_index, chunk_size)
    valid = int((targets != ignore_index).sum())
    scale = 1.0 / max(valid, 1) if mean else 1.0
    loss = losses.sum() * scale
    w = weight.to(acc)
    N = hidden.shape[0]
    grad_hidden = torch.empty_like(hidden) if need_grad_hidden else hidden.new_empty(0)
    gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_grad_weight else None
    if need_grad_hidden or need_grad_weight:
        for s in range(0, N, chunk_size):
            e = min(s + chunk_size, N)
            g = _chunk_grad_logits(_chunk_logits(hidden, w, s, e), lse[s:e], targets[s:e], ignore_index, scale)
            if need_grad_hidden:
                grad_hidden[s:e] = (g @ w).to(hidden.dtype)
            if need_grad_weight:
                gw += g.T @ hidden[s:e].to(acc)
            del g
    grad_weight = gw.to(weight.dtype) if need_grad_weight else weight.new_empty(0)
    return loss, grad_hidden, grad_weight


# ---- fake kernels ----

@register_fake("linear_cross_entropy")
def _linear_cross_entropy_fake(hidden, weight, targets, ignore_index, chunk_size):
    _check(hidden, weight, targets, chunk_size, "linear_cross_entropy")
    acc = acc_dtype(hidden.dtype)
    return hidden.new_empty(hidden.shape[0], dtype=acc), hidden.new_empty(hidden.shape[0], dtype=acc)


@register_fake("linear_cross_entropy_backward")
def _linear_cross_entropy_backward_fake(grad_losses, hidden, weight, targets, lse, ignore_index, chunk_size):
    _check_backward(grad_losses, hidden, weight, targets, lse, chunk_size)
    return torch.empty_like(hidden), torch.empty_like(weight)


@register_fake("linear_cross_entropy_and_grad")
def _linear_cross_entropy_and_grad_fake(hidden, weight, targets, ignore_index, chunk_size, mean,
                                        need_grad_hidden, need_grad_weight):
    _check(hidden, weight, targets, chunk_size, "linear_cross_entropy_and_grad")
    loss = hidden.new_empty((), dtype=acc_dtype(hidden.dtype))
    gh = torch.empty_like(hidden) if need_grad_hidden else hidden.new_empty(0)
    gw = torch.empty_like(weight) if need_grad_weight else weight.new_empty(0)
    return loss, gh, gw


# ---- autograd ----

def _setup_context(ctx, inputs, output):
    hidden, weight, targets, ignore_index, chunk_size = inputs
    _, lse = output
    ctx.save_for_backward(hidden, weight, targets, lse)
    ctx.ignore_index = ignore_index
    ctx.chunk_size = chunk_size
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_losses, _grad_lse):
    hidden, weight, targets, lse = ctx.saved_tensors
    grad_hidden, grad_weight = ops.linear_cross_entropy_backward(
        grad_losses, hidden, weight, targets, lse, ctx.ignore_index, ctx.chunk_size)
    return (grad_hidden if ctx.needs_input_grad[0] else None,
            grad_weight if ctx.needs_input_grad[1] else None, None, None, None)


torch.library.register_autograd(qualname("linear_cross_entropy"), _backward, setup_context=_setup_context)


def _and_grad_setup_context(ctx, inputs, output):
    _, grad_hidden, grad_weight = output
    ctx.save_for_backward(grad_hidden, grad_weight)
    ctx.mark_non_differentiable(grad_hidden, grad_weight)
    # No zero gradients made up for the two gradient outputs (a [V, C] fill per step otherwise).
    ctx.set_materialize_grads(False)
    _, _, _, _, _, _, need_gh, need_gw = inputs
    ctx.need = (need_gh, need_gw)


def _and_grad_backward(ctx, grad_loss, _ggh, _ggw):
    if grad_loss is None:
        return None, None, None, None, None, None, None, None
    grad_hidden, grad_weight = ctx.saved_tensors
    need_gh, need_gw = ctx.need
    for i, (name, need) in enumerate((("hidden", need_gh), ("weight", need_gw))):
        if ctx.needs_input_grad[i] and not need:
            raise RuntimeError(f"linear_cross_entropy_and_grad: a gradient for {name} was asked for but "
                               f"the op was called with need_grad_{name}=False")
    # loss.backward() on the CPU: the forward's gradients as they are, with no [V, C] multiply
    # and allocation (autograd copies a gradient it must keep, so a retained graph stays exact).
    # Traced tensors (fake, functional) are never read and take the general path.
    if type(grad_loss) is torch.Tensor and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
        gh, gw = grad_hidden, grad_weight
    else:
        gh, gw = (grad_hidden * grad_loss).to(grad_hidden.dtype), (grad_weight * grad_loss).to(grad_weight.dtype)
    return (gh if need_gh and ctx.needs_input_grad[0] else None,
            gw if need_gw and ctx.needs_input_grad[1] else None, None, None, None, None, None, None)


torch.library.register_autograd(qualname("linear_cross_entropy_and_grad"), _and_grad_backward,
                                setup_context=_and_grad_setup_context)
