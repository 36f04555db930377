"""Fused ops of kr-mini-llm as PyTorch custom ops (torch.ops.kr_mini_llm.*).

Each op has a native CPU kernel, a fake kernel for torch.compile, autograd whose backward
is itself a registered op, a pure-PyTorch reference (`*_reference`, the tests' oracle), and a
fallback kernel for backends without a native one, built on what PyTorch runs best there
(`backend_report(device)` says which path runs; `use_device_fallbacks()` or KR_MINI_LLM_OPS=fallback
sends the CPU through the fallbacks, to test them).
"""
import torch

from ._library import (DeviceOpMissing, device_fallbacks, kernel_path, switch_from_environment,
                       use_device_fallbacks)
from .argmax import argmax, argmax_reference
from .attention import attention, attention_reference
from .decode_linear import (decode_linear, decode_linear_reference, decode_linear_swiglu,
                            decode_linear_swiglu_reference, dequantize_int4, dequantize_int8, quantize_int4,
                            quantize_int8)
from .decode_attention import (decode_attention, decode_attention_reference, decode_attention_step,
                               decode_attention_step_reference, kv_cache_append, kv_cache_append_reference,
                               new_cache)
from .decode_block import decode_block, decode_block_reference, decode_stack, decode_stack_reference
from .decode_forward import decode_forward, decode_forward_reference
from .dropout import dropout, dropout_reference
from .linear import linear, linear_reference
from .linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from .rms_norm import rms_norm, rms_norm_reference
from .rope import rope_inv_freq, rope_tables
from .rotary import rotary, rotary_reference
from .swiglu import swiglu, swiglu_reference

# Public op name -> the registered ops it runs (forward first).
OPS = {
    "rms_norm": ("rms_norm", "rms_norm_backward"),
    "rotary": ("rotary", "rotary_backward"),
    "swiglu": ("swiglu", "swiglu_backward"),
    "dropout": ("dropout",),
    "attention": ("attention", "attention_backward"),
    "decode_attention": ("decode_attention",),
    "kv_cache_append": ("kv_cache_append",),
    "decode_attention_step": ("decode_attention_step",),
    "linear_cross_entropy": ("linear_cross_entropy", "linear_cross_entropy_backward",
                             "linear_cross_entropy_and_grad"),
    "decode_linear": ("decode_linear",),
    "decode_linear_swiglu": ("decode_linear_swiglu",),
    "decode_block": ("decode_block",),
    "decode_stack": ("decode_stack",),
    "decode_forward": ("decode_forward",),
    "argmax": ("argmax",),
}


def backend_report(device="cpu") -> dict:
    """Which path each op takes on `device`: 'native' (its fused kernel), or where it has none (or
    the CPU is switched to them, use_device_fallbacks) its fallback's: 'sdpa' (PyTorch's
    scaled_dot_product_attention, the backward in blocks of rows), 'chunked', 'fused_rms_norm',
    'elementwise', 'copy', 'dequantize+linear', 'aten', 'parts' (the op's parts, each by its own path)."""
    return {name: kernel_path(registered[0], device) for name, registered in OPS.items()}


def simd_capability() -> str:
    """The SIMD level the CPU kernels were compiled for (DEFAULT, AVX2 or AVX512)."""
    from .. import _C

    return _C.simd_capability()


__all__ = ["rms_norm", "rms_norm_reference", "rotary", "rotary_reference", "rope_tables",
           "rope_inv_freq", "swiglu", "swiglu_reference", "dropout", "dropout_reference", "attention",
           "attention_reference", "decode_attention",
           "decode_attention_reference", "decode_attention_step", "decode_attention_step_reference", "kv_cache_append", "kv_cache_append_reference", "new_cache", "linear_cross_entropy",
           "linear_cross_entropy_reference", "linear", "linear_reference", "decode_linear", "decode_linear_reference", "decode_linear_swiglu",
           "decode_linear_swiglu_reference", "decode_block", "decode_block_reference", "decode_stack", "decode_stack_reference", "decode_forward", "decode_forward_reference", "quantize_int8", "dequantize_int8", "quantize_int4", "dequantize_int4", "argmax", "argmax_reference",
           "backend_report", "simd_capability", "OPS",
           "use_device_fallbacks", "device_fallbacks", "DeviceOpMissing"]

switch_from_environment()  # KR_MINI_LLM_OPS=fallback: the CPU runs the device fallbacks
