"""Bound checks on user-controlled values cannot overflow, and run before anything is written.

Each case runs in a child process: before these checks were written without sums, a cache length
near INT64_MAX passed `lens + S <= Tmax` (the sum wrapped), the append wrote outside the cache and
the process later aborted in free(); in the child that is a failed test, not a dead pytest.
"""
import re
import textwrap

from .isolated import assert_clean_exit, run_python

PRELUDE = """
import torch
from kr_mini_llm import ops

def expect_error(fn, *written):
    before = [t.clone() for t in written]
    try:
        fn()
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        print(f"{type(e).__name__}: {e}")
    else:
        raise SystemExit("no error raised")
    for t, b in zip(written, before):
        assert torch.equal(t, b), "a cache was written before the error"
"""

BIG = 2**63 - 1


def caches(B=1, Tmax=8, Hkv=1, D=4):
    return f"kc = torch.zeros({B}, {Tmax}, {Hkv}, {D}); vc = torch.zeros({B}, {Tmax}, {Hkv}, {D})"


# (case id, code run after PRELUDE, what the error must say)
CASES = [
    ("append lens INT64_MAX", caches() + f"""
new = torch.ones(1, 1, 1, 4)
expect_error(lambda: ops.kv_cache_append(kc, vc, new, new, torch.tensor([{BIG}])), kc, vc)""",
     rf"ValueError: kv_cache_append: cache_lens\[0\] = {BIG} leaves no room for S = 1"),
    ("append lens INT64_MAX-2, S=4", caches() + f"""
new = torch.ones(1, 4, 1, 4)
expect_error(lambda: ops.kv_cache_append(kc, vc, new, new, torch.tensor([{BIG - 2}])), kc, vc)""",
     rf"cache_lens\[0\] = {BIG - 2} leaves no room for S = 4"),
    ("append lens INT64_MIN", caches() + f"""
new = torch.ones(1, 4, 1, 4)
expect_error(lambda: ops.kv_cache_append(kc, vc, new, new, torch.tensor([{-BIG - 1}])), kc, vc)""",
     rf"cache_lens\[0\] = {-BIG - 1} leaves no room"),
    ("append: a bad last row writes no row", caches(B=3) + f"""
new = torch.ones(3, 2, 1, 4)
expect_error(lambda: ops.kv_cache_append(kc, vc, new, new, torch.tensor([0, 3, {BIG}])), kc, vc)""",
     r"cache_lens\[2\] = 9223372036854775807 leaves no room"),
    ("append S > Tmax", caches(Tmax=2) + """
new = torch.ones(1, 3, 1, 4)
expect_error(lambda: ops.kv_cache_append(kc, vc, new, new, torch.tensor([0])), kc, vc)""",
     r"S = 3 new rows \(k_new.size\(1\)\) do not fit a cache of Tmax = 2"),
    ("step lens INT64_MAX", caches() + f"""
qkv = torch.ones(1, 1, 12)
cos, sin = torch.ones(1, 1, 2), torch.zeros(1, 1, 2)
expect_error(lambda: ops.decode_attention_step(qkv, None, None, 1e-6, cos, sin, kc, vc,
                                               torch.tensor([{BIG}]), 1), kc, vc)""",
     rf"cache_lens\[0\] = {BIG} leaves no room for S = 1"),
    # (2**62 + 2) * 4 wraps to 8, the width of this qkv
    ("step num_heads whose width wraps", caches() + """
qkv = torch.ones(1, 1, 8)
cos, sin = torch.ones(1, 1, 2), torch.zeros(1, 1, 2)
expect_error(lambda: ops.decode_attention_step(qkv, None, None, 1e-6, cos, sin, kc, vc,
                                               torch.tensor([0]), 2**62), kc, vc)""",
     r"ValueError: decode_attention_step: num_heads = 4611686018427387904 is too large"),
    # an expanded operand has rows 0 apart: the tile GEMM read 64 rows from one
    ("tile gemm on an expanded operand", """
a = torch.randn(1, 64).expand(64, 64)
b = torch.randn(64, 64)
gemm = torch.ops.kr_mini_llm.gemm_for_tests
expect_error(lambda: gemm(a, b, torch.zeros(64, 64), False, False, False, True))""",
     r"ValueError: gemm_for_tests: tile operands need rows at least a row apart"),
]


def test_bound_violations_are_clear_errors_before_any_write():
    """All cases in one child (one import of torch): each prints its error, then the next runs."""
    script = PRELUDE + "".join(f"\nprint('case:', {cid!r})\n{textwrap.dedent(code)}\n" for cid, code, _ in CASES)
    proc = run_python(["-c", script])
    assert_clean_exit(proc)
    out = proc.stdout.split("case: ")[1:]
    assert len(out) == len(CASES)
    for (cid, _, match), text in zip(CASES, out):
        assert text.startswith(cid) and re.search(match, text), f"{cid}: expected /{match}/ in\n{text}"
