"""The native kernels' argument checks (csrc/ops/common.h) in Python, with their exception types and
wording, for the fake kernels (torch.compile) and the device fallbacks: a mistake raises the same
error on every device. TORCH_CHECK_VALUE is a ValueError and TORCH_CHECK_TYPE a TypeError;
check_value/check_type raise those and accept the symbolic sizes of a traced call, and their
messages are built only when a check fails.
"""
import functools

import torch

# The floating dtypes every kernel accepts.
FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_value(cond, message) -> None:
    """torch._check_value, also where Dynamo traces the check (an op's fallback inlined into a compiled
    graph): Dynamo refuses a message closure over tensors, so there the check is a plain raise, which
    it traces (a symbolic condition becomes a guard)."""
    if torch.compiler.is_dynamo_compiling():
        if not cond:
            raise ValueError(message())
    else:
        torch._check_value(cond, message)


def check_type(cond, message) -> None:
    """torch._check_type, traceable by Dynamo as check_value is."""
    if torch.compiler.is_dynamo_compiling():
        if not cond:
            raise TypeError(message())
    else:
        torch._check_type(cond, message)


@functools.lru_cache(maxsize=None)
def dtype_name(dtype: torch.dtype) -> str:
    """c10's name of a dtype, as the C++ messages print it (Float, BFloat16, Int, ...)."""
    return torch.empty(0, dtype=dtype, device="cpu").type().removeprefix("torch.").removesuffix("Tensor")


def shape_str(t: torch.Tensor) -> str:
    """A shape as the C++ messages print it: [2, 3]."""
    return str(list(t.shape))


def check_float(t: torch.Tensor, op: str, name: str) -> None:
    check_type(t.dtype in FLOATS, lambda: f"{op}: {name} must be float32, bfloat16, float16 or float64, "
                                          f"got {dtype_name(t.dtype)}")


def check_same_dtype(a: torch.Tensor, an: str, b: torch.Tensor, bn: str, op: str) -> None:
    check_type(a.dtype == b.dtype, lambda: f"{op}: {an} ({dtype_name(a.dtype)}) and {bn} "
                                           f"({dtype_name(b.dtype)}) must have the same dtype")


def check_dim(t: torch.Tensor, dim: int, op: str, name: str, expected: str) -> None:
    check_value(t.dim() == dim, lambda: f"{op}: {name} must be {dim}-D {expected}, got shape {shape_str(t)}")
