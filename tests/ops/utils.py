"""Shared checks for the op tests: float64 references, dtype tolerances, thread control."""
import contextlib

import pytest
import torch

# Tolerances for a kernel result in `dtype` against a float64 reference.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# A promise only the native CPU kernels make (the fallbacks run PyTorch's kernels, which make none):
# deselected while the CPU runs the device fallbacks (conftest.py).
native_thread_invariance = pytest.mark.native_kernels(
    reason="the same bits on 1 and 2 threads: the CPU kernels split their work by size, never by thread count")


def assert_close(actual, expected64, dtype, scale=1.0, msg=""):
    """Compares `actual` (any dtype) to a float64 reference, with tolerances for `dtype`.

    `scale` widens the tolerance for quantities that sum many terms (gradients of weights).
    """
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected64.double(), atol=tol["atol"] * scale,
                               rtol=tol["rtol"] * scale, msg=lambda m: f"{msg}\n{m}")


def randn(*shape, dtype=torch.float32, generator=None, requires_grad=False):
    t = torch.randn(*shape, dtype=torch.float64, generator=generator).to(dtype)
    return t.requires_grad_(requires_grad)


@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def grads(fn, inputs, grad_out):
    """Output and input gradients of fn at `inputs` (which are cloned as leaves)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    gs = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return out.detach(), gs
