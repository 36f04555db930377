"""The kernels' GEMM layer (csrc/ops/gemm.h) against float64, through the test-only op
kr_mini_llm::gemm_for_tests: the whole-matrix GEMM (linear_cross_entropy) for every dtype and
transposition, the tile GEMM (attention) on strided rows, odd sizes and VNNI panel edges."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kr_mini_llm import _C
from kr_mini_llm.ops import _library  # noqa: F401  (loads the ops)

gemm = torch.ops.kr_mini_llm.gemm_for_tests
ROOT = Path(__file__).resolve().parents[2]
# max|err| <= REL * K^0.5 * max|a| * max|b|: bf16/fp16 products are rounded to the dtype once.
REL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(c, a, b, c0, ta, tb, accumulate, dtype):
    a64 = a.double().t() if ta else a.double()
    b64 = b.double().t() if tb else b.double()
    ref = a64 @ b64 + (c0.double() if accumulate else 0)
    K = a64.shape[1]
    bound = REL[dtype] * max(K, 1) ** 0.5 * (1 + ref.abs().max().item())
    err = (c.double() - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= bound, f"{dtype} ta={ta} tb={tb} acc={accumulate}: max err {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matrix_gemm_matches_float64(dtype, ta, tb):
    g = torch.Generator().manual_seed(1)
    for M, K, N in [(1, 1, 1), (1, 37, 5), (7, 13, 1), (33, 65, 17), (70, 3, 130)]:
        a = torch.randn(*((K, M) if ta else (M, K)), generator=g, dtype=torch.float64).to(dtype)
        b = torch.randn(*((N, K) if tb else (K, N)), generator=g, dtype=torch.float64).to(dtype)
        for out_dtype in {acc(dtype), dtype}:  # fp32 accumulation buffer, or the dtype itself
            c0 = torch.randn(M, N, generator=g, dtype=torch.float64).to(out_dtype)
            for accumulate in (False, True):
                c = gemm(a, b, c0, ta, tb, accumulate, False)
                assert c.dtype == out_dtype and c.shape == (M, N)
                check(c, a, b, c0, ta, tb, accumulate, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weight_gradient_gemm_accumulates_in_fp32(dtype):
    """a^T @ b of 16-bit operands into fp32 c (the LM head's weight gradient), a's rows strided as
    the loss's buffer is. Once the product is over 8 MB it is summed in fp32 with no rounding to
    the dtype (the VNNI brgemm where bf16/fp16 are native, fp32 where widened); below, oneDNN's
    product may be rounded to the dtype once, as the whole-matrix GEMM's is."""
    g = torch.Generator().manual_seed(3)
    # The last shape's 16-bit product is over 8 MB, which is where the VNNI brgemm takes over
    # (K padded to 32 and in two blocks, a ragged last panel of 6 columns, a ragged row block).
    for M, K, N in [(1, 1, 1), (33, 31, 17), (31, 33, 65), (100, 257, 64), (70, 600, 130), (5, 1, 200),
                    (4099, 300, 1030)]:
        a = torch.randn(K, 2 * M + 3, generator=g, dtype=torch.float64).to(dtype)[:, :M]
        b = torch.randn(K, N, generator=g, dtype=torch.float64).to(dtype)
        c0 = torch.randn(M, N, generator=g)
        for accumulate in (False, True):
            c = gemm(a, b, c0, True, False, accumulate, False)
            check(c, a, b, c0, True, False, accumulate, torch.float32 if M * N * 2 > 8 << 20 else dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tile_gemm_matches_float64(dtype):
    """Odd K (a zero VNNI row), N across panel edges (16, 64) and row strides wider than K, N."""
    g = torch.Generator().manual_seed(2)
    for M, K, N in [(1, 1, 1), (3, 7, 17), (16, 64, 64), (33, 65, 70), (5, 128, 130), (48, 31, 200)]:
        a = torch.randn(M, K + 3, generator=g, dtype=torch.float64).to(dtype)[:, :K]
        b = torch.randn(K, N + 5, generator=g, dtype=torch.float64).to(dtype)[:, :N]
        c0 = torch.randn(M, N, generator=g, dtype=acc(dtype))
        for accumulate in (False, True):
            c = gemm(a, b, c0, False, False, accumulate, True)
            check(c, a, b, c0, False, False, accumulate, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_tile_gemm_on_leading_columns_and_rows(dtype):
    """tile_mm on B packed whole, using its first n columns and k rows (attention's causal blocks):
    n inside a panel, on a 16-column edge, past a 64-column panel and ragged; k odd and even (the
    VNNI pair of rows k - 1, k holds B's own row k, met by A's zero pad); c's other columns kept."""
    g = torch.Generator().manual_seed(4)
    M, K, N = 19, 45, 130
    a = torch.randn(M, K + 2, generator=g, dtype=torch.float64).to(dtype)[:, :K]
    b = torch.randn(K, N + 3, generator=g, dtype=torch.float64).to(dtype)[:, :N]
    c0 = torch.randn(M, N, generator=g, dtype=acc(dtype))
    for n, k in [(20, K), (64, 33), (70, 20), (129, 7), (N, 1), (16, 44), (N, K), (0, K), (N, 0)]:
        for accumulate in (False, True):
            c = gemm(a, b, c0, False, False, accumulate, True, n, k)
            if n:  # n = 0 writes nothing: c is c0 (below)
                check(c[:, :n], a[:, :k], b[:k, :n], c0[:, :n], False, False, accumulate, dtype)
            assert torch.equal(c[:, n:], c0[:, n:])


def test_kernels_are_the_build_of_the_isa_level_under_test():
    """Under scripts/run_isa.py (make test-isa-avx2) the kernels are the build for that level."""
    from kr_mini_llm import ops

    expect = {"avx2": "AVX2", "avx512": "AVX512", "avx512-no-amx": "AVX512"}.get(os.environ.get("KR_MINI_LLM_ISA_LEVEL"))
    if expect is not None:
        assert ops.simd_capability() == expect
    assert ops.simd_capability() in ("DEFAULT", "AVX2", "AVX512")


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="inner dimensions differ"):
        gemm(torch.ones(2, 3), torch.ones(4, 2), torch.ones(2, 2), False, False, False, False)
    with pytest.raises(ValueError, match="c must be"):
        gemm(torch.ones(2, 3), torch.ones(3, 2), torch.ones(3, 3), False, False, False, False)


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="the VNNI brgemm ukernel is x86-only (oneDNN ukernel API)")
def test_bf16_tiles_use_native_dot_products_only_where_the_isa_allows():
    """bf16 tile GEMMs take the VNNI ukernel where the CPU has bf16 dot products (AMX or
    AVX512-BF16) and oneDNN's ISA limit allows them, and widen to fp32 (still correct) under an
    AVX2 limit; whole-matrix bf16 GEMMs widen there too. Checked in child processes: oneDNN reads its limit once, at start-up."""
    flags = _cpu_flags()
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    if "ONEDNN_MAX_CPU_ISA" not in os.environ and "DNNL_MAX_CPU_ISA" not in os.environ:
        assert _C.vnni_tile_gemm(False) == native
    code = (
        "import torch; from kr_mini_llm import _C; from kr_mini_llm.ops import _library\n"
        "a = torch.randn(33, 65).bfloat16(); b = torch.randn(65, 70).bfloat16()\n"
        "exact = a.double() @ b.double()\n"
        "c = torch.ops.kr_mini_llm.gemm_for_tests(a, b, torch.zeros(33, 70), False, False, False, True)\n"
        "err = (c.double() - exact).abs().max().item()\n"
        "m = torch.ops.kr_mini_llm.gemm_for_tests(a.t().contiguous(), b, torch.zeros(33, 70), True, False, False, False)\n"
        # Whole matrices may round the product to bf16 (as F.linear does): half a bf16 ulp, 2^-8 relative.
        "err = max(err, ((m.double() - exact).abs() - exact.abs() * 2.0 ** -8).max().item())\n"
        "print(int(_C.vnni_tile_gemm(False)), err)\n")
    levels = {"AVX2": False, "AVX512_CORE": False, "AVX512_CORE_BF16": native}
    for level, expect in levels.items():
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=level, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        vnni, err = out.stdout.split()
        assert bool(int(vnni)) == expect, f"{level}: vnni={vnni}, expected {expect}"
        assert float(err) < 1e-3, f"{level}: max err {err}"
