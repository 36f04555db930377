import pytest
import torch

from kr_mini_llm import ops
from kr_mini_llm.ops.rms_norm import _rms_norm_backward_fallback, _rms_norm_fallback

from .utils import DTYPES, assert_close, grads, native_thread_invariance, num_threads, randn

SHAPES = [(1, 1), (1, 7), (3, 32), (2, 5, 33), (4, 64), (2, 3, 100), (1, 1, 768), (7, 1000), (2, 4097)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_float64_reference(shape, dtype):
    x = randn(*shape, dtype=dtype)
    w = (1 + 0.1 * randn(shape[-1])).to(dtype)
    gy = randn(*shape, dtype=dtype)
    y, (gx, gw) = grads(ops.rms_norm, (x, w), gy)
    y64, (gx64, gw64) = grads(ops.rms_norm_reference, (x.double(), w.double()), gy.double())
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
    assert_close(y, y64, dtype, msg="y")
    assert_close(gx, gx64, dtype, scale=4, msg="grad_x")
    rows = x.numel() // shape[-1]
    assert_close(gw, gw64, dtype, scale=4 * max(1, rows) ** 0.5, msg="grad_weight")


def test_float32_weight_with_bfloat16_input():
    x = randn(5, 96, dtype=torch.bfloat16)
    w = 1 + 0.1 * randn(96)
    gy = randn(5, 96, dtype=torch.bfloat16)
    y, (gx, gw) = grads(ops.rms_norm, (x, w), gy)
    y64, (gx64, gw64) = grads(ops.rms_norm_reference, (x.double(), w.double()), gy.double())
    assert y.dtype == torch.bfloat16 and gw.dtype == torch.float32
    assert_close(y, y64, torch.bfloat16)
    assert_close(gx, gx64, torch.bfloat16, scale=4)
    assert_close(gw, gw64, torch.bfloat16, scale=4)


@pytest.mark.parametrize("eps", [1e-6, 1e-5, 0.5])
def test_eps_is_used(eps):
    x = 1e-3 * randn(3, 40, dtype=torch.float64)
    w = randn(40, dtype=torch.float64)
    assert_close(ops.rms_norm(x, w, eps), ops.rms_norm_reference(x, w, eps), torch.float64)


def test_gradcheck():
    x = randn(3, 2, 13, dtype=torch.float64, requires_grad=True)
    w = randn(13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.rms_norm(a, b, 1e-6), (x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x = randn(4, 3, 40, dtype=dtype, requires_grad=True)
    w = randn(40, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.kr_mini_llm.rms_norm.default, (x, w, 1e-6))
    rstd = torch.ops.kr_mini_llm.rms_norm(x, w, 1e-6)[1]
    torch.library.opcheck(torch.ops.kr_mini_llm.rms_norm_backward.default,
                          (randn(4, 3, 40, dtype=dtype), x.detach(), w.detach(), rstd))


@native_thread_invariance
def test_same_bits_on_one_and_two_threads():
    x = randn(300, 257)
    w = randn(257)
    gy = randn(300, 257)
    with num_threads(1):
        y1, g1 = grads(ops.rms_norm, (x, w), gy)
    with num_threads(2):
        y2, g2 = grads(ops.rms_norm, (x, w), gy)
    assert torch.equal(y1, y2) and torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])


def test_non_contiguous_input():
    x = randn(64, 6)[:, ::2].T  # [3, 64], strided
    assert not x.is_contiguous()
    w = randn(64)
    assert_close(ops.rms_norm(x, w), ops.rms_norm_reference(x.double(), w.double()), torch.float32)


def test_reference_fallback_kernels_match_autograd():
    """The kernels used on backends without a native one (CUDA/MPS today)."""
    x = randn(6, 50, dtype=torch.float64)
    w = randn(50, dtype=torch.float64)
    gy = randn(6, 50, dtype=torch.float64)
    y64, (gx64, gw64) = grads(ops.rms_norm_reference, (x, w), gy)
    y, rstd = _rms_norm_fallback(x, w, 1e-6)
    gx, gw = _rms_norm_backward_fallback(gy, x, w, rstd)
    assert_close(y, y64, torch.float64)
    assert_close(gx, gx64, torch.float64)
    assert_close(gw, gw64, torch.float64)


def test_torch_compile_fullgraph():
    x = randn(4, 48, requires_grad=True)
    w = randn(48, requires_grad=True)
    f = torch.compile(lambda a, b: ops.rms_norm(a, b).square().sum(), fullgraph=True, backend="aot_eager")
    f(x, w).backward()
    _, (gx, gw) = grads(lambda a, b: ops.rms_norm(a, b).square().sum(), (x, w), None)
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(w.grad, gw)


@pytest.mark.parametrize("x, w, exc, match", [
    (torch.randn(4, 8), torch.randn(7), ValueError, r"weight must be \[C\] = \[8\]"),
    (torch.randn(4, 8), torch.randn(2, 8), ValueError, r"weight must be \[C\] = \[8\]"),
    (torch.tensor(1.0), torch.randn(1), ValueError, "x must have at least 1 dim"),
    (torch.ones(4, 8, dtype=torch.int32), torch.randn(8), TypeError, "x must be float32, bfloat16"),
])
def test_bad_input_is_a_clear_error(x, w, exc, match):
    with pytest.raises(exc, match=match):
        ops.rms_norm(x, w)


def test_backward_rejects_wrong_rstd():
    x, w = randn(4, 8), randn(8)
    with pytest.raises(ValueError, match="rstd must be the"):
        torch.ops.kr_mini_llm.rms_norm_backward(x, x, w, torch.ones(3))
