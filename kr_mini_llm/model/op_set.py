"""Which implementation of the ops a model runs: the fused kernels or the pure-PyTorch references.

Both have the same signatures, so a model switches with one argument and the two paths can
be compared (tests/model/test_fused_vs_reference.py).
"""
from types import SimpleNamespace

from .. import ops

_NAMES = ("rms_norm", "rotary", "swiglu", "attention", "decode_attention", "kv_cache_append",
          "linear_cross_entropy", "linear", "dropout")

IMPLS = ("fused", "reference")


def op_set(impl: str = "fused") -> SimpleNamespace:
    if impl not in IMPLS:
        raise ValueError(f"ops impl must be one of {IMPLS}, got {impl!r}")
    suffix = "" if impl == "fused" else "_reference"
    return SimpleNamespace(impl=impl, **{n: getattr(ops, n + suffix) for n in _NAMES})
