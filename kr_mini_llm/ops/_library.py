"""Loads the native library and the helpers every op module uses to register itself."""
import contextlib
import functools
import os
import re
import warnings

import torch

from ..errors import KrMiniLlmError

try:
    from .. import _C  # noqa: F401  (its import runs the TORCH_LIBRARY registrations)
except ImportError as e:  # pragma: no cover - only when the build is missing or stale
    raise ImportError(
        "kr_mini_llm's native library (kr_mini_llm/_C) is missing or does not match this torch "
        f"({torch.__version__}): {e}. Rebuild it with `pip install --no-build-isolation -e .`."
    ) from e

NAMESPACE = "kr_mini_llm"
ops = torch.ops.kr_mini_llm

# Python kernels for backends that have no native kernel (CUDA, MPS, XPU today), each built on
# what PyTorch runs best there (SDPA, its fused RMSNorm, chunked GEMMs). The CPU has its own
# kernels, which take precedence over CompositeExplicitAutograd.
_fallback_lib = torch.library.Library(NAMESPACE, "IMPL")
# op name -> (fallback kernel, the path it takes: 'sdpa', 'chunked', ...), for backend_report.
_FALLBACKS: dict = {}
# op name -> the device types with a native kernel of it, read when its fallback is registered
# (the native library registers first, on import): plain data, so compiled code can branch on it.
_NATIVE_DEVICES: dict = {}
# While the CPU runs the fallbacks (use_device_fallbacks): the library that holds them at its key.
_cpu_override = None
# The same fact as a bool, which compiled code guards on (takes_fallback).
_cpu_on_fallbacks = False
# KR_MINI_LLM_OPS=fallback sends the CPU through the fallbacks from import on.
ENV_SWITCH = "KR_MINI_LLM_OPS"
# The devices an op may have a native kernel for, by their dispatch keys.
_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def register_fake(name: str):
    """torch.library.register_fake for op `name`, refusing a call that mixes meta tensors with real
    ones: the dispatcher sends such a call to the fake kernel (meta wins), which would hand back an
    uninitialised tensor on the real device instead of an error."""

    def wrap(fn):
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            devices = {t.device.type for t in _tensors((args, kwargs))}
            if "meta" in devices and len(devices) > 1:
                raise ValueError(f"{name}: its tensors are on {' and '.join(sorted(devices))}; put them all on "
                                 "one device")
            return fn(*args, **kwargs)

        torch.library.register_fake(qualname(name))(checked)
        return fn

    return wrap


def _tensors(obj):
    """The tensors in nested lists, tuples and dicts of arguments."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class DeviceOpMissing(KrMiniLlmError, NotImplementedError):
    """A PyTorch op that an op's fallback runs has no kernel on this device (MPS lacks a few)."""


# PyTorch's MPS error: "The operator 'aten::foo' is not currently implemented for the MPS device. ..."
_MPS_MISSING = re.compile(r"operator '([^']+)' is not (?:current(?:ly)? )?implemented for the MPS device")


def _naming_missing_mps_ops(name: str, fn):
    """fn, where a NotImplementedError of MPS becomes one line that names our op, PyTorch's op it
    lacks, and the switch that runs such ops on the CPU (instead of a traceback through the fallback).
    fn runs without autocast, as a native kernel does: the op's dtypes are its arguments' (an autocast
    region would otherwise recast the fallback's own fp32 math, e.g. linear_cross_entropy's logits)."""

    @functools.wraps(fn)
    def run(*args):
        try:
            with torch._C._DisableAutocast():
                return fn(*args)
        except NotImplementedError as e:
            missing = _MPS_MISSING.search(str(e))
            if missing is None or isinstance(e, DeviceOpMissing):
                raise
            raise DeviceOpMissing(
                f"{name}: this torch has no MPS kernel for {missing.group(1)}, which the op's MPS path runs; "
                "start Python with PYTORCH_ENABLE_MPS_FALLBACK=1 to run such ops on the CPU") from None

    return run


def register_fallback(name: str, path: str):
    """Registers fn as the pure-PyTorch kernel of op `name` for every backend without one; `path`
    names what it runs on (backend_report)."""

    def wrap(fn):
        _NATIVE_DEVICES[name] = frozenset(dev for dev, key in _DEVICE_KEYS.items()
                                          if torch._C._dispatch_has_kernel_for_dispatch_key(qualname(name), key))
        kernel = _naming_missing_mps_ops(name, fn)
        _fallback_lib.impl(name, kernel, "CompositeExplicitAutograd")
        _FALLBACKS[name] = (kernel, path)
        if _cpu_override is not None:
            _override_cpu(_cpu_override, name, kernel)
        return fn

    return wrap


def _override_cpu(lib, name, fn):
    with warnings.catch_warnings():  # the dispatcher warns that a kernel is overridden: meant here
        warnings.simplefilter("ignore")
        lib.impl(name, fn, "CPU")


def use_device_fallbacks(enabled: bool = True) -> bool:
    """Sends the CPU through the kernels the other devices run (the fallbacks) instead of its native
    ones, or back (enabled=False); returns whether it was on before. The CPU proof of those
    kernels: tests and benchmarks run the same code as MPS/CUDA with it."""
    global _cpu_override, _cpu_on_fallbacks
    was = _cpu_override is not None
    if enabled and not was:
        lib = torch.library.Library(NAMESPACE, "IMPL")
        for name, (fn, _) in _FALLBACKS.items():
            _override_cpu(lib, name, fn)
        _cpu_override = lib
    elif not enabled and was:
        _cpu_override._destroy()  # the native CPU kernels are back in force
        _cpu_override = None
    _cpu_on_fallbacks = _cpu_override is not None
    return was


@contextlib.contextmanager
def device_fallbacks(enabled: bool = True):
    """use_device_fallbacks(enabled) for a with-block; the state before comes back after it."""
    was = use_device_fallbacks(enabled)
    try:
        yield
    finally:
        use_device_fallbacks(was)


def switch_from_environment() -> None:
    """Applies KR_MINI_LLM_OPS: 'fallback' turns use_device_fallbacks on, 'native' or unset leaves it."""
    value = os.environ.get(ENV_SWITCH, "native").strip().lower()
    if value not in ("native", "fallback", ""):
        raise ValueError(f"{ENV_SWITCH}={value!r}: use 'fallback' (the CPU runs the kernels of MPS/CUDA) "
                         "or 'native' (its own kernels, the default)")
    if value == "fallback":
        use_device_fallbacks(True)


def qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype the kernels use: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def takes_fallback(name: str, device: torch.device) -> bool:
    """Whether op `name` runs its fallback on `device` (no native kernel there, or the CPU switched to
    the fallbacks). Plain Python on plain data: torch.compile evaluates it while tracing and guards on
    the switch, so a compiled model can inline an op's fallback math instead of calling the op."""
    if device.type == "cpu" and _cpu_on_fallbacks:
        return True
    return device.type not in _NATIVE_DEVICES[name]


def kernel_path(name: str, device) -> str:
    """The path op `name` takes on `device`: 'native' where it has its own kernel (and the CPU is not
    switched to the fallbacks), else its fallback's ('sdpa', 'chunked', ...)."""
    return _FALLBACKS[name][1] if takes_fallback(name, torch.device(device)) else "native"
