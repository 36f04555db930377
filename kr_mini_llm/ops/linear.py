"""fp32 linear layers on the CPU through whichever GEMM library is faster here, shape by shape.

torch's F.linear runs fp32 on MKL's sgemm in the x86 wheels, and MKL picks its code by CPU vendor:
on an AMD EPYC (Zen 4) MKL's sgemm was measured at about half the FMA
peak, where oneDNN's fp32 matmul reached 70-88% on the same shapes. `linear(x, weight)` times both
libraries once per shape for each of a training step's three GEMMs (y = x W^T, dx = dy W,
dW = dy^T x) and takes oneDNN for a GEMM only where it is at least ONEDNN_MIN_SPEEDUP x as fast:
a narrow edge is noise, and a choice that flipped between runs would change their rounding.
Where MKL keeps all three (this repository's Xeon at every ISA level, benchmarks/linear_cpu_*.md),
the call is F.linear itself. Other dtypes, autocast, other devices, tensor subclasses and
torch.compile (Inductor picks its own GEMMs) get F.linear as well. A routed layer has a first
derivative only (no create_graph double backward, which nothing here uses). The timing is per
process, so two runs, or two ranks, on a machine where the two libraries are within noise of
1.15x could route a GEMM differently and round it differently.

Where ATen sees no AVX-512 nothing is timed and every GEMM stays on MKL: both libraries run AVX2
FMA code there, and MKL's sgemm is the faster one (an AVX2-only AMD EPYC, Zen 3, 2 threads: MKL at
130-189 GFLOP/s on model_tiny's GEMMs, oneDNN at 74-154, its dW slowest), while a timing taken
beside a busy neighbour picked oneDNN for nearly every GEMM (MKL's threads lose more to a shared
core) and made a model_tiny training step 5-7% slower.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["linear", "linear_reference", "linear_route", "ONEDNN_MIN_SPEEDUP"]

ONEDNN_MIN_SPEEDUP = 1.15
KINDS = ("fwd", "dx", "dw")
# Rows timed: GEMM efficiency settles by a few thousand rows; fewer rows are timed as they come,
# rounded up to a power of two so a ragged last batch does not time again.
_MAX_TIMED_ROWS = 2048
_routes: dict[tuple[int, int, int], tuple[bool, bool, bool]] = {}


def _onednn(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_t^T on oneDNN's fp32 matmul."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


# kind -> (MKL through aten, oneDNN): y = x W^T from (x, W); dx = dy W from (dy, W); dW = dy^T x from (dy, x).
PRODUCTS = {
    "fwd": (lambda x, w: x @ w.t(), lambda x, w: _onednn(x, w)),
    "dx": (lambda dy, w: dy @ w, lambda dy, w: _onednn(dy, w.t())),
    "dw": (lambda dy, x: dy.t() @ x, lambda dy, x: _onednn(dy.t(), x.t())),
}


@functools.lru_cache(maxsize=1)
def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _bucket(rows: int) -> int:
    return _MAX_TIMED_ROWS if rows >= _MAX_TIMED_ROWS else 1 << max(0, rows - 1).bit_length()


def measure(kind: str, rows: int, cin: int, cout: int) -> tuple[float, float]:
    """Seconds of one `kind` GEMM at [rows, cin] -> [rows, cout] through (MKL, oneDNN): best of 3
    after a warm-up, the two taking turns. A private generator leaves the caller's random stream alone."""
    from ..device import best_seconds

    g = torch.Generator().manual_seed(0)
    x, w, dy = (torch.randn(rows, cin, generator=g), torch.randn(cout, cin, generator=g),
                torch.randn(rows, cout, generator=g))
    args = {"fwd": (x, w), "dx": (dy, w), "dw": (dy, x)}[kind]
    mkl, onednn = best_seconds([lambda fn=fn: fn(*args) for fn in PRODUCTS[kind]], 3)
    return mkl, onednn


@functools.lru_cache(maxsize=1)
def _vector_widths_may_differ() -> bool:
    """Whether MKL may run narrower vectors than oneDNN here: only where ATen sees AVX-512 (MKL
    takes its AVX2 path on a CPU of another vendor). At ATen's AVX2 level both run AVX2 FMA code and
    timing them would only measure noise."""
    return torch.backends.cpu.get_cpu_capability() != "AVX2"


def linear_route(rows: int, cin: int, cout: int) -> tuple[bool, bool, bool]:
    """(fwd, dx, dw): whether each GEMM of a [rows, cin] -> [rows, cout] layer runs on oneDNN here.
    Timed once per (row bucket, cin, cout) in a process, where the two libraries may differ."""
    key = (_bucket(rows), cin, cout)
    route = _routes.get(key)
    if route is None:
        if _vector_widths_may_differ():
            route = tuple(bool(mkl >= ONEDNN_MIN_SPEEDUP * dnn) for mkl, dnn in (measure(k, *key) for k in KINDS))
        else:
            route = (False, False, False)
        _routes[key] = route
    return route


class _RoutedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, route):
        # dx needs W, dW needs x: a frozen weight (LoRA's base) keeps no copy of x alive.
        ctx.save_for_backward(x2 if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        ctx.route = route
        return PRODUCTS["fwd"][route[0]](x2, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dx = PRODUCTS["dx"][ctx.route[1]](dy, weight) if ctx.needs_input_grad[0] else None
        dw = PRODUCTS["dw"][ctx.route[2]](dy, x2) if ctx.needs_input_grad[1] else None
        return dx, dw, None


def _routable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    plain = (torch.Tensor, torch.nn.Parameter)  # not DTensor or another subclass
    return (type(x) in plain and type(weight) in plain
            and x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.dim() == 2 and weight.is_contiguous()
            and x.dim() >= 1 and x.shape[-1] == weight.shape[1] and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and _onednn_available())


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T (no bias), as F.linear, with each fp32 CPU GEMM on the library that is faster
    for this shape on this machine (`linear_route`)."""
    if not _routable(x, weight):
        return F.linear(x, weight)
    x2 = x.reshape(-1, x.shape[-1])
    route = linear_route(x2.shape[0], weight.shape[1], weight.shape[0])
    if not any(route):
        return F.linear(x, weight)
    return _RoutedLinear.apply(x2.contiguous(), weight, route).reshape(*x.shape[:-1], weight.shape[0])


def linear_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear without bias: the test oracle and the reference op set's linear layer."""
    return F.linear(x, weight)
