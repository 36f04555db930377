import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.decode_linear import _decode_linear_fallback, _decode_linear_swiglu_fallback, x_format

from .utils import num_threads

# odd and prime sizes, sizes below and around one vector, model widths
SHAPES = [(1, 1), (7, 5), (37, 53), (33, 17), (96, 256), (130, 688), (50, 768)]
ROWS = [1, 2, 5, 8, 9, 16]
WEIGHT_DTYPES = [torch.float32, torch.bfloat16, torch.int8]


def make_weight(M, K, wdtype, group_size=None, gen=None):
    """wdtype torch.uint8: int4 (group_size None: 32)."""
    w = torch.randn(M, K, dtype=torch.float64, generator=gen)
    if wdtype == torch.int8:
        return ops.quantize_int8(w, group_size)
    if wdtype == torch.uint8:
        return ops.quantize_int4(w, group_size or 32)
    return w.to(wdtype), None


def in_features(w):
    return 2 * w.shape[1] if w.dtype == torch.uint8 else w.shape[1]


def dequantize(w, s, dtype=torch.float64):
    if w.dtype == torch.int8:
        return ops.dequantize_int8(w, s, dtype)
    if w.dtype == torch.uint8:
        return ops.dequantize_int4(w, s, dtype)
    return w.to(dtype)


def quantize_x(x, block):
    """x as the int8 kernels see it, in float64: per block, s = max|x| / 127 and q = round(x / s),
    computed in float32 exactly as the kernel does (x * (127 / max|x|), rounded half to even)."""
    xb = x.float().reshape(*x.shape[:-1], -1, block)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv)
    return (q.double() * (amax / 127.0).double()).reshape(x.shape)


def kernel_x(x, w, s):
    """x in the precision the kernel meets the weights in (see ops.decode_linear.x_format); the
    device fallback (KR_MINI_LLM_OPS=fallback) dequantizes the weights and keeps x in fp32."""
    if ops.backend_report("cpu")["decode_linear"] != "native":
        return x.double()
    fmt, block = x_format(w.dtype, in_features(w) // s.shape[1] if s is not None else None)
    if fmt == "bf16":
        return x.float().bfloat16().double()
    if fmt == "int8":
        return quantize_x(x, block)
    return x.double()


def ref64(x, w, s, residual=None, swiglu=False):
    """Float64 reference on the exact weights and x the kernel sees (int8/int4 dequantised in
    float64; x rounded or quantized where the kernel's dot products need it)."""
    w64 = dequantize(w, s)
    y = kernel_x(x, w, s) @ w64.T
    if swiglu:
        gate, up = y.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up
    return y if residual is None else y + residual.double()


def tol(x_dtype, K):
    # fp32 sums of K products against float64; a bf16 output adds its own rounding
    if x_dtype == torch.bfloat16:
        return dict(atol=2e-2 * K**0.5, rtol=1.6e-2)
    return dict(atol=2e-5 * K**0.5, rtol=1e-4)


@pytest.mark.parametrize("wdtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("M,K", SHAPES)
def test_matches_float64_reference(wdtype, M, K):
    gen = torch.Generator().manual_seed(M * 1000 + K)
    w, s = make_weight(M, K, wdtype, gen=gen)
    for N in ROWS:
        x = torch.randn(N, K, generator=gen)
        y = ops.decode_linear(x, w, s)
        assert y.shape == (N, M) and y.dtype == torch.float32
        torch.testing.assert_close(y.double(), ref64(x, w, s), **tol(torch.float32, K))


@pytest.mark.parametrize("wdtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("group_size", [16, 32, 64, 128])
def test_int8_groups_and_residual(wdtype, group_size):
    gen = torch.Generator().manual_seed(group_size)
    M, K = 67, 384
    w, s = make_weight(M, K, wdtype, group_size, gen)
    for N in (1, 16):
        x = torch.randn(2, N, K, generator=gen)  # leading dims are kept
        r = torch.randn(2, N, M, generator=gen)
        y = ops.decode_linear(x, w, s, r)
        assert y.shape == (2, N, M)
        torch.testing.assert_close(y.double(), ref64(x, w, s, r), **tol(torch.float32, K))


@pytest.mark.parametrize("wdtype", WEIGHT_DTYPES)
# 131 = two 64-output chunks (the kernel's gate-then-up runs) and 3 more, not a multiple of any block
@pytest.mark.parametrize("I,K", [(1, 3), (45, 77), (131, 96), (344, 256)])
def test_swiglu_matches_float64_reference(wdtype, I, K):
    gen = torch.Generator().manual_seed(I + K)
    w, s = make_weight(2 * I, K, wdtype, gen=gen)
    for N in (1, 3, 16):
        x = torch.randn(N, K, generator=gen)
        y = ops.decode_linear_swiglu(x, w, s)
        assert y.shape == (N, I)
        torch.testing.assert_close(y.double(), ref64(x, w, s, swiglu=True), **tol(torch.float32, K))


@pytest.mark.parametrize("wdtype", WEIGHT_DTYPES)
def test_bfloat16_activations(wdtype):
    gen = torch.Generator().manual_seed(3)
    w, s = make_weight(41, 130, wdtype, gen=gen)
    x = torch.randn(4, 130, generator=gen).bfloat16()
    r = torch.randn(4, 41, generator=gen).bfloat16()
    y = ops.decode_linear(x, w, s, r)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), ref64(x, w, s, r), **tol(torch.bfloat16, 130))


def test_same_result_on_one_and_two_threads():
    gen = torch.Generator().manual_seed(5)
    w, s = make_weight(1001, 256, torch.int8, 64, gen)
    x = torch.randn(3, 256, generator=gen)
    with num_threads(1):
        y1 = ops.decode_linear(x, w, s)
    with num_threads(2):
        y2 = ops.decode_linear(x, w, s)
    assert torch.equal(y1, y2)


def test_fallback_matches_kernel():
    """The fallback keeps x in fp32. On x that the kernel's formats represent exactly (bf16 values
    for bf16 weights; for int8, per block a whole number of steps with one element at 127 steps),
    both agree to fp32 accumulation."""
    gen = torch.Generator().manual_seed(6)
    w, s = make_weight(2 * 30, 128, torch.int8, 64, gen)
    x = torch.randn(5, 128, generator=gen)
    x_int8 = quantize_x(x, x_format(torch.int8, 64)[1] or 128).float()
    for wq, sq, xq in ((w, s, x_int8), (ops.dequantize_int8(w, s).bfloat16(), None, x.bfloat16().float()),
                       (ops.dequantize_int8(w, s), None, x)):
        torch.testing.assert_close(_decode_linear_fallback(xq, wq, sq), ops.decode_linear(xq, wq, sq),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_decode_linear_swiglu_fallback(xq, wq, sq), ops.decode_linear_swiglu(xq, wq, sq),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("group_size", [None, 16, 32, 64, 128, 256])
def test_int8_activation_rounding_is_bounded(group_size):
    """Against the unquantized x: each output is off by at most sum_k |w_k| * step_k / 2 (half of
    x's quantization step in its block), plus fp32 accumulation."""
    gen = torch.Generator().manual_seed(9)
    M, K = 96, 512
    w, s = make_weight(M, K, torch.int8, group_size, gen)
    x = torch.randn(7, K, generator=gen) * torch.rand(7, 1, generator=gen) * 4
    x[:, 5] = 40.0  # one outlier channel, as in real residual streams: coarser steps in its block
    y = ops.decode_linear(x, w, s).double()
    w64 = ops.dequantize_int8(w, s, torch.float64)
    fmt, block = x_format(torch.int8, group_size or K)
    step = torch.zeros_like(x, dtype=torch.float64)
    if fmt == "int8":
        step = (x.double().view(7, -1, block).abs().amax(-1, keepdim=True) / 127).expand(7, K // block, block)
        step = step.reshape(7, K)
    bound = (step / 2) @ w64.abs().T + 2e-5 * K**0.5 + 1e-4 * (x.double().abs() @ w64.abs().T)
    err = (y - x.double() @ w64.T).abs()
    assert (err <= bound).all(), (err - bound).max()


def test_quantize_round_trip_error_bound():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(64, 256, generator=gen) * torch.rand(64, 1, generator=gen)
    for group in (None, 32, 128):
        q, s = ops.quantize_int8(w, group)
        assert q.dtype == torch.int8 and s.dtype == torch.float32 and q.abs().max() <= 127
        # rounding to the nearest step: at most half a step per element, per group
        err = (ops.dequantize_int8(q, s) - w).abs().view(64, s.shape[1], -1)
        assert (err <= s.unsqueeze(-1) / 2 + 1e-7).all()
    q, s = ops.quantize_int8(torch.zeros(3, 32), 32)
    assert (q == 0).all() and torch.isfinite(s).all()


def test_opcheck():
    gen = torch.Generator().manual_seed(8)
    for wdtype in WEIGHT_DTYPES:
        w, s = make_weight(2 * 19, 64, wdtype, 32, gen)
        x = torch.randn(3, 64, generator=gen)
        torch.library.opcheck(torch.ops.kr_mini_llm.decode_linear.default, (x, w, s, torch.randn(3, 38)))
        torch.library.opcheck(torch.ops.kr_mini_llm.decode_linear_swiglu.default, (x, w, s))


def test_inference_only():
    w = torch.randn(8, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.decode_linear(torch.randn(1, 16), w)
    with torch.no_grad():
        ops.decode_linear(torch.randn(1, 16), w)


def test_bad_input():
    x = torch.randn(2, 64)
    q, s = ops.quantize_int8(torch.randn(8, 64), 32)
    with pytest.raises(ValueError, match="in_features"):
        ops.decode_linear(torch.randn(2, 63), q, s)
    with pytest.raises(ValueError, match="needs scales"):
        ops.decode_linear(x, q)
    with pytest.raises(ValueError, match="dividing"):
        ops.decode_linear(x, q, torch.ones(8, 3))
    with pytest.raises(ValueError, match="only for int8"):
        ops.decode_linear(x, torch.randn(8, 64), s)
    with pytest.raises(TypeError, match="float32, bfloat16, int8, or uint8"):
        ops.decode_linear(x, torch.randn(8, 64).half())
    with pytest.raises(ValueError, match="gate and up"):
        ops.decode_linear_swiglu(x, torch.randn(7, 64))
    with pytest.raises(ValueError, match="residual"):
        ops.decode_linear(x, q, s, torch.randn(2, 9))
    with pytest.raises(ValueError, match="does not divide in_features 100"):
        ops.quantize_int8(torch.randn(4, 100), 32)


# ---- int4 (uint8 weights, two inputs per byte) ---------------------------------------------------
INT4_SHAPES = [(1, 32), (7, 64), (37, 96), (33, 160), (130, 704), (50, 768)]


@pytest.mark.parametrize("M,K", INT4_SHAPES)
def test_int4_matches_float64_reference(M, K):
    gen = torch.Generator().manual_seed(M * 1000 + K + 4)
    for group_size in sorted({32, 64 if K % 64 == 0 else 32, K}):
        w, s = make_weight(M, K, torch.uint8, group_size, gen)
        assert w.shape == (M, K // 2) and s.shape == (M, K // group_size)
        for N in ROWS:
            x = torch.randn(N, K, generator=gen)
            r = torch.randn(N, M, generator=gen) if N % 2 else None
            y = ops.decode_linear(x, w, s, r)
            assert y.shape == (N, M) and y.dtype == torch.float32
            torch.testing.assert_close(y.double(), ref64(x, w, s, r), **tol(torch.float32, K))


def check_against_reference(x, w, s, swiglu: bool):
    y = (ops.decode_linear_swiglu if swiglu else ops.decode_linear)(x, w, s)
    t = tol(torch.float32, x.shape[-1])
    if not swiglu:
        torch.testing.assert_close(y.double(), ref64(x, w, s), **t)
        return
    # silu(gate) * up: each factor's fp32 error (atol + rtol of it) reaches the product times the
    # other factor (silu' is within [-0.1, 1.1])
    gate, up = ref64(x, w, s).chunk(2, dim=-1)
    ref = torch.nn.functional.silu(gate) * up
    err = lambda v: t["atol"] + t["rtol"] * v.abs()
    bound = 1.1 * err(gate) * up.abs() + torch.nn.functional.silu(gate).abs() * err(up) + t["rtol"] * ref.abs()
    bad = (y.double() - ref).abs() > bound
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} outside the bound, worst {(y.double() - ref).abs().max()}"



@settings(max_examples=60, deadline=None, derandomize=True)
@given(M=st.integers(1, 40), blocks=st.integers(1, 24), per_group=st.integers(1, 8), N=st.integers(1, 9),
       swiglu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_int4_any_blocks_and_groups(M, blocks, per_group, N, swiglu, seed):
    """Every count of 32-input blocks (the AVX2 kernel steps two at a time, the AVX512-VNNI one four:
    a last step of 1-3 blocks is loaded masked) and every group of whole blocks: one block, a whole
    step (one scale per step), or a size that splits a step between scales."""
    per_group = min(per_group, blocks)
    blocks -= blocks % per_group
    K, G = 32 * blocks, 32 * per_group
    gen = torch.Generator().manual_seed(seed)
    w, s = make_weight(2 * M if swiglu else M, K, torch.uint8, G, gen)
    check_against_reference(torch.randn(N, K, generator=gen) * 3, w, s, swiglu)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(M=st.integers(1, 40), blocks=st.integers(1, 16), per_group=st.sampled_from([1, 2, 3, 4, None]),
       N=st.integers(1, 9), swiglu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_int8_any_rows_blocks_and_groups(M, blocks, per_group, N, swiglu, seed):
    """int8 weights: any count of outputs (the blocks of 4 rows of batch 1 and their remainder, gate/up
    pairs), of 32-input blocks and of groups of them (None: one scale per output channel, where x's
    blocks may be several per group), for one row of x and more."""
    per_group = blocks if per_group is None else min(per_group, blocks)
    blocks -= blocks % per_group
    K, G = 32 * blocks, 32 * per_group
    gen = torch.Generator().manual_seed(seed)
    w, s = make_weight(2 * M if swiglu else M, K, torch.int8, None if per_group == blocks else G, gen)
    check_against_reference(torch.randn(N, K, generator=gen) * 3, w, s, swiglu)

@pytest.mark.parametrize("wdtype", [torch.int8, torch.uint8])
def test_non_finite_x_gives_nan_in_every_output(wdtype):
    """A NaN or inf in x reaches every output (it must not vanish in the int8 quantization of x)."""
    gen = torch.Generator().manual_seed(14)
    w, s = make_weight(21, 192, wdtype, 32, gen)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(3, 192, generator=gen)
        x[1, 100] = bad
        y = ops.decode_linear(x, w, s)
        assert y[1].isnan().all() or (bad == float("inf") and not y[1].isfinite().any()), y[1]
        assert y[[0, 2]].isfinite().all()


@pytest.mark.parametrize("I,K,group_size", [(1, 32, 32), (45, 96, 32), (344, 256, 128), (20, 640, 64)])
def test_int4_swiglu_matches_float64_reference(I, K, group_size):
    gen = torch.Generator().manual_seed(I + K)
    w, s = make_weight(2 * I, K, torch.uint8, group_size, gen)
    for N in (1, 3, 8, 16):
        x = torch.randn(2, N, K, generator=gen)  # leading dims are kept
        y = ops.decode_linear_swiglu(x, w, s)
        assert y.shape == (2, N, I)
        torch.testing.assert_close(y.double(), ref64(x, w, s, swiglu=True), **tol(torch.float32, K))


def test_int4_bfloat16_activations_and_threads():
    gen = torch.Generator().manual_seed(11)
    w, s = make_weight(1001, 160, torch.uint8, 32, gen)
    x = torch.randn(4, 160, generator=gen).bfloat16()
    r = torch.randn(4, 1001, generator=gen).bfloat16()
    y = ops.decode_linear(x, w, s, r)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), ref64(x, w, s, r), **tol(torch.bfloat16, 160))
    with num_threads(1):
        y1 = ops.decode_linear(x.float(), w, s)
    with num_threads(2):
        y2 = ops.decode_linear(x.float(), w, s)
    assert torch.equal(y1, y2)


def test_int4_fallback_matches_kernel():
    """As test_fallback_matches_kernel, for int4 weights."""
    gen = torch.Generator().manual_seed(12)
    w, s = make_weight(2 * 30, 256, torch.uint8, 64, gen)
    x = torch.randn(5, 256, generator=gen)
    fmt, block = x_format(torch.uint8, 64)
    xq = quantize_x(x, block).float() if fmt == "int8" else x
    torch.testing.assert_close(_decode_linear_fallback(xq, w, s), ops.decode_linear(xq, w, s), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_decode_linear_swiglu_fallback(xq, w, s), ops.decode_linear_swiglu(xq, w, s),
                               atol=1e-4, rtol=1e-4)


def test_int4_activation_rounding_is_bounded():
    """As test_int8_activation_rounding_is_bounded: int4 weights against the unquantized x."""
    gen = torch.Generator().manual_seed(13)
    M, K = 96, 512
    for group_size in (32, 256):
        w, s = make_weight(M, K, torch.uint8, group_size, gen)
        x = torch.randn(7, K, generator=gen) * torch.rand(7, 1, generator=gen) * 4
        x[:, 5] = 40.0
        y = ops.decode_linear(x, w, s).double()
        w64 = dequantize(w, s)
        fmt, block = x_format(torch.uint8, group_size)
        step = torch.zeros_like(x, dtype=torch.float64)
        if fmt == "int8":
            step = (x.double().view(7, -1, block).abs().amax(-1, keepdim=True) / 127).expand(7, K // block, block)
            step = step.reshape(7, K)
        bound = (step / 2) @ w64.abs().T + 2e-5 * K**0.5 + 1e-4 * (x.double().abs() @ w64.abs().T)
        err = (y - x.double() @ w64.T).abs()
        assert (err <= bound).all(), (err - bound).max()


def test_int4_format():
    """The documented layout: per block of 32 inputs, byte i = input i (low nibble) | input i + 16
    (high nibble), each as q + 8; scale = (weight of largest magnitude) / -8."""
    q = torch.tensor([[(i % 16) - 8 for i in range(32)] + [7 - (i % 16) for i in range(32)]])  # [1, 64]
    w = q.double() * 0.25
    w[0, 0] = -2.0   # q = -8 at scale 0.25: the largest magnitude, so scale = -2 / -8 = 0.25
    w[0, 32] = 1.75  # second group: max |w| is -2.0 (q = -8 at inputs 47 and 63), scale 0.25 again
    packed, scales = ops.quantize_int4(w, 32)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 32)
    assert scales.dtype == torch.float16  # Q4_0's scale type
    torch.testing.assert_close(scales, torch.tensor([[0.25, 0.25]], dtype=torch.float16))
    u = (q + 8).to(torch.uint8)[0]
    expected = torch.cat([u[b * 32:b * 32 + 16] | (u[b * 32 + 16:b * 32 + 32] << 4) for b in range(2)])
    assert torch.equal(packed[0], expected)
    assert torch.equal(ops.dequantize_int4(packed, scales, torch.float64), w)
    # a positive maximum gets a negative scale, so it too is exactly q = -8
    packed, scales = ops.quantize_int4(torch.linspace(-1, 3, 32).view(1, 32), 32)
    assert scales.item() == pytest.approx(-3 / 8) and ops.dequantize_int4(packed, scales)[0, -1].item() == 3.0
    # an all-zero group: scale 0, every q 0
    packed, scales = ops.quantize_int4(torch.zeros(2, 64), 32)
    assert (packed == 0x88).all() and (scales == 0).all()


def test_int4_round_trip_error_bound():
    gen = torch.Generator().manual_seed(14)
    w = torch.randn(64, 256, generator=gen) * torch.rand(64, 1, generator=gen)
    for group in (32, 128, 256):
        q, s = ops.quantize_int4(w, group)
        err = (ops.dequantize_int4(q, s) - w).abs().view(64, s.shape[1], -1)
        # half a step, except where +8 steps clamp to 7: one step
        assert (err <= s.abs().unsqueeze(-1) + 1e-6).all()
        assert (err <= s.abs().unsqueeze(-1) / 2 + 1e-6).float().mean() > 0.95


def test_int4_matches_gguf_q4_0():
    """Our packed bytes and fp16 scales are Q4_0's, bit for bit: the int4 model is the q4_0 GGUF."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(15))
    packed, scales = ops.quantize_int4(w, 32)
    blocks = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0).reshape(16, 4, 18)
    assert np.array_equal(blocks[:, :, 2:].reshape(16, 64), packed.numpy())
    d = blocks[:, :, :2].copy().view(np.float16).reshape(16, 4)
    assert scales.dtype == torch.float16 and np.array_equal(d, scales.numpy())
    # also where d's fp16 rounding would move a weight across a rounding boundary: q comes from the
    # fp32 d, as in Q4_0. Row 0's d rounds up in fp16, row 1's down; weights at +-k.5 steps of d.
    up, down = torch.tensor(0.1002), torch.tensor(0.1)
    assert up.half().float() > up and down.half().float() < down
    w = torch.zeros(2, 32)
    for r, d in enumerate((up, down)):
        w[r, 0] = -8 * d
        w[r, 1:8] = torch.tensor([3.5, -2.5, 1.5, -0.5, 0.5, 2.5, -3.5]) * d
    packed, scales = ops.quantize_int4(w, 32)
    blocks = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0).reshape(2, 1, 18)
    assert np.array_equal(blocks[:, :, 2:].reshape(2, 16), packed.numpy())
    assert np.array_equal(blocks[:, :, :2].copy().view(np.float16).reshape(2, 1), scales.numpy())
    # the case decides: q from the fp16 scale would differ
    from_fp16 = torch.floor(w / scales.float() + 8.5).clamp(0, 15)
    assert not torch.equal(from_fp16.to(torch.uint8), torch.floor(w / (w[:, :1] / -8) + 8.5).clamp(0, 15).to(torch.uint8))


def test_int4_opcheck():
    gen = torch.Generator().manual_seed(16)
    w, s = make_weight(2 * 19, 64, torch.uint8, 32, gen)
    x = torch.randn(3, 64, generator=gen)
    torch.library.opcheck(torch.ops.kr_mini_llm.decode_linear.default, (x, w, s, torch.randn(3, 38)))
    torch.library.opcheck(torch.ops.kr_mini_llm.decode_linear_swiglu.default, (x, w, s))


def test_int4_bad_input():
    x = torch.randn(2, 64)
    q, s = ops.quantize_int4(torch.randn(8, 64), 32)
    with pytest.raises(ValueError, match="2 \\* weight.size\\(1\\)"):
        ops.decode_linear(torch.randn(2, 63), q, s)
    with pytest.raises(ValueError, match="multiple of 32"):  # K = 48: not whole packed blocks
        ops.decode_linear(torch.randn(2, 48), torch.zeros(8, 24, dtype=torch.uint8), torch.ones(8, 1).half())
    with pytest.raises(ValueError, match="int4 weight needs scales"):
        ops.decode_linear(x, q)
    with pytest.raises(ValueError, match="groups must be a multiple of 32"):
        ops.decode_linear(x, q, torch.ones(8, 4).half())  # groups of 16
    with pytest.raises(ValueError, match="dividing"):
        ops.decode_linear(x, q, torch.ones(8, 3).half())
    with pytest.raises(TypeError, match="scales of int4 weights must be float16"):
        ops.decode_linear(x, q, s.float())
    with pytest.raises(TypeError, match="scales of int8 weights must be float32"):
        ops.decode_linear(x, torch.zeros(8, 64, dtype=torch.int8), s)
    with pytest.raises(ValueError, match="float16 scale"):
        ops.quantize_int4(torch.full((1, 32), 1e6), 32)
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.decode_linear(x, q.view(8, 2, 16), s)
    with pytest.raises(ValueError, match="gate and up"):
        ops.decode_linear_swiglu(x, q[:7], s[:7])
    with pytest.raises(ValueError, match="multiple of 32 that divides in_features 100"):
        ops.quantize_int4(torch.randn(4, 100), 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.quantize_int4(torch.randn(4, 64), 16)
    with pytest.raises(ValueError, match="NaN or inf"):
        ops.quantize_int4(torch.tensor([[float("nan")] * 32]), 32)
    with pytest.raises(ValueError, match="quantize_int4's pair"):
        ops.dequantize_int4(q, torch.ones(8, 4).half())
