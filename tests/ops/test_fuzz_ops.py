"""Fuzz layer over every public op: generated hostile arguments (tests/ops/fuzz_cases.py) must give
a clean Python error that wrote nothing, or the pure-PyTorch reference's result; never a signal.

The examples run in child processes (a batch of ops each, one torch import per batch): a
segfault or abort fails that batch with the example that caused it, the child's last line.
"""
import pytest

from kr_mini_llm import ops as kr_ops

from . import fuzz_cases
from .isolated import describe_exit, run_python

# Batches of about equal cost; together they name every op fuzz_cases knows.
BATCHES = [
    ["rms_norm", "rotary", "swiglu", "dropout", "attention", "linear_cross_entropy"],
    ["decode_attention", "kv_cache_append", "decode_attention_step", "decode_block"],
    ["decode_linear", "decode_linear_swiglu", "linear", "rope_tables", "quantize_int8", "quantize_int4",
     "argmax"],
]


# Exports that are not ops, or are fuzzed through another spec.
NOT_FUZZED_ALONE = {"backend_report": "not an op", "simd_capability": "not an op", "OPS": "not an op",
                    "use_device_fallbacks": "not an op", "device_fallbacks": "not an op",
                    "DeviceOpMissing": "an exception type",
                    "dequantize_int8": "quantize_int8's round trip", "dequantize_int4": "quantize_int4's round trip",
                    "rope_inv_freq": "rope_tables",
                    "new_cache": "not an op: every generated cache takes one of its layouts",
                    "decode_stack": "decode_block per layer; its list and per-layer checks are generated in "
                                    "test_decode_stack.py",
                    "decode_forward": "decode_stack with the embedding, the rope tables and the head around it; its "
                                      "own arguments are generated in test_decode_forward.py"}


def test_batches_cover_every_op():
    assert sorted(sum(BATCHES, [])) == sorted(fuzz_cases.SPECS)
    public = {n for n in kr_ops.__all__ if not n.endswith("_reference")} - set(NOT_FUZZED_ALONE)
    assert public <= set(fuzz_cases.SPECS), f"ops without a fuzz spec: {sorted(public - set(fuzz_cases.SPECS))}"


@pytest.mark.parametrize("ops", BATCHES, ids=["training", "kv_cache", "linear_rope_int8"])
def test_generated_arguments_never_crash(ops):
    proc = run_python(["-m", "tests.ops.fuzz_cases", *ops])
    assert proc.returncode == 0 and "fuzz: all passed" in proc.stdout, (
        f"{describe_exit(proc)}\nreproduce with: python -m tests.ops.fuzz_cases {' '.join(ops)}")
