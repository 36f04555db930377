"""Loads the native library and the helpers every op module uses to register itself."""
import torch

try:
    from .. import _C  # noqa: F401  (its import runs the TORCH_LIBRARY registrations)
except ImportError as e:  # pragma: no cover - only when the build is missing or stale
    raise ImportError(
        "kr_mini_llm's native library (kr_mini_llm/_C) is missing or does not match this torch "
        f"({torch.__version__}): {e}. Rebuild it with `pip install --no-build-isolation -e .`."
    ) from e

NAMESPACE = "kr_mini_llm"
ops = torch.ops.kr_mini_llm

# Python kernels for backends that have no native kernel (CUDA, MPS, ... today). The CPU
# has its own kernels, which take precedence over CompositeExplicitAutograd.
_fallback_lib = torch.library.Library(NAMESPACE, "IMPL")


def register_fallback(name: str):
    """Registers fn as the pure-PyTorch kernel of op `name` for every backend without one."""

    def wrap(fn):
        _fallback_lib.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return wrap


def qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype the kernels use: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU", "meta": "Meta"}


def kernel_path(name: str, device) -> str:
    """'native' if op `name` has its own kernel for `device`, else 'reference'."""
    dev = torch.device(device).type
    key = _DEVICE_KEYS.get(dev, dev.upper())
    has = torch._C._dispatch_has_kernel_for_dispatch_key(qualname(name), key)
    return "native" if has else "reference"
