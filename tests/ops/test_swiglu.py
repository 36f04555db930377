import pytest
import torch

from kr_mini_llm import ops
from kr_mini_llm.ops.swiglu import _swiglu_backward_fallback, _swiglu_fallback

from .utils import DTYPES, assert_close, grads, native_thread_invariance, num_threads, randn

# any shape: 0-d, length 1, odd and prime sizes, model widths (intermediate 2048 / 2816)
SHAPES = [(), (1,), (7,), (3, 33), (2, 5, 17), (1, 1, 1), (4, 2048), (2, 3, 2816), (31, 97)]


def rand(shape, dtype, scale=1.0):
    return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype)


def gate_up(shape, dtype):
    # gate spread wide enough to reach sigmoid's saturated tails
    return rand(shape, dtype, 3.0), rand(shape, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_float64_reference(shape, dtype):
    gate, up = gate_up(shape, dtype)
    g = rand(shape, dtype)
    y, (gg, gu) = grads(ops.swiglu, (gate, up), g)
    y64, (gg64, gu64) = grads(ops.swiglu_reference, (gate.double(), up.double()), g.double())
    assert y.dtype == gg.dtype == gu.dtype == dtype and y.shape == gg.shape == gu.shape == gate.shape
    # silu(gate) reaches |3 * gate|, so scale the tolerances by the magnitude of the values
    assert_close(y, y64, dtype, scale=2, msg="out")
    assert_close(gg, gg64, dtype, scale=2, msg="grad_gate")
    assert_close(gu, gu64, dtype, scale=2, msg="grad_up")


def test_float64():
    gate, up = gate_up((5, 77), torch.float64)
    g = randn(5, 77, dtype=torch.float64)
    y, (gg, gu) = grads(ops.swiglu, (gate, up), g)
    y64, (gg64, gu64) = grads(ops.swiglu_reference, (gate, up), g)
    assert_close(y, y64, torch.float64)
    assert_close(gg, gg64, torch.float64)
    assert_close(gu, gu64, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_gate_values(dtype):
    vals = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 5.0, -5.0, 20.0, -20.0, 40.0, -40.0,
                         87.0, -87.0, 89.0, -89.0, 100.0, -100.0, 1e4, -1e4, 1e30, -1e30])
    gate = vals.to(dtype)
    up = torch.linspace(-2, 2, len(vals)).to(dtype)
    g = torch.linspace(1, -1, len(vals)).to(dtype)
    y, (gg, gu) = grads(ops.swiglu, (gate, up), g)
    y64, (gg64, gu64) = grads(ops.swiglu_reference, (gate.double(), up.double()), g.double())
    assert torch.isfinite(y).all() and torch.isfinite(gg).all() and torch.isfinite(gu).all()
    # relative tolerances only matter here: values span 1e-30 .. 1e38
    rtol = 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(y.double(), y64, rtol=rtol, atol=1e-30)
    torch.testing.assert_close(gg.double(), gg64, rtol=rtol, atol=1e-30)
    torch.testing.assert_close(gu.double(), gu64, rtol=rtol, atol=1e-30)


def test_nan_propagates():
    gate = torch.tensor([float("nan"), 1.0])
    up = torch.tensor([1.0, float("nan")])
    y = ops.swiglu(gate, up)
    assert torch.isnan(y).all()


def test_strided_halves_of_a_fused_gate_up_projection():
    gu_full = randn(3, 7, 2 * 45, requires_grad=True)
    gate, up = gu_full.chunk(2, dim=-1)
    assert not gate.is_contiguous() and not up.is_contiguous()
    g = randn(3, 7, 45)
    y = ops.swiglu(gate, up)
    assert y.is_contiguous()
    y.backward(g)
    ref_in = gu_full.detach().double().requires_grad_(True)
    y64 = ops.swiglu_reference(*ref_in.chunk(2, dim=-1))
    y64.backward(g.double())
    assert_close(y, y64, torch.float32)
    assert_close(gu_full.grad, ref_in.grad, torch.float32)


def test_mixed_layouts_and_transposed_inputs():
    gate = randn(40, 9).T  # not viewable as rows: copied
    up = randn(9, 40)  # contiguous
    g = randn(40, 9).T
    y, (gg, gu) = grads(ops.swiglu, (gate, up), g)
    y64, (gg64, gu64) = grads(ops.swiglu_reference, (gate.double(), up.double()), g.double())
    assert_close(y, y64, torch.float32)
    assert_close(gg, gg64, torch.float32)
    assert_close(gu, gu64, torch.float32)
    # one strided row view, one contiguous
    base = randn(6, 2 * 33)
    gate, up = base[:, :33], randn(6, 33)
    assert_close(ops.swiglu(gate, up), ops.swiglu_reference(gate.double(), up.double()), torch.float32)
    assert_close(ops.swiglu(up, gate), ops.swiglu_reference(up.double(), gate.double()), torch.float32)


def test_empty_inputs():
    for shape in [(0,), (3, 0), (0, 5)]:
        y = ops.swiglu(torch.zeros(shape), torch.zeros(shape))
        assert y.shape == shape


def test_gradcheck():
    gate, up = gate_up((3, 2, 13), torch.float64)
    assert torch.autograd.gradcheck(ops.swiglu, (gate.requires_grad_(), up.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck(dtype):
    gate, up = gate_up((4, 3, 40), dtype)
    gate.requires_grad_(True)
    up.requires_grad_(True)
    torch.library.opcheck(torch.ops.kr_mini_llm.swiglu.default, (gate, up))
    torch.library.opcheck(torch.ops.kr_mini_llm.swiglu_backward.default,
                          (randn(4, 3, 40, dtype=dtype), gate.detach(), up.detach()))


@native_thread_invariance
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strided", [False, True])
def test_same_bits_on_one_and_two_threads(dtype, strided):
    if strided:
        gate, up = randn(301, 2 * 1001, dtype=dtype).chunk(2, dim=-1)
    else:
        gate, up = gate_up((301, 1001), dtype)
    g = randn(301, 1001, dtype=dtype)
    with num_threads(1):
        y1, g1 = grads(ops.swiglu, (gate, up), g)
    with num_threads(2):
        y2, g2 = grads(ops.swiglu, (gate, up), g)
    assert torch.equal(y1, y2) and torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])


def test_reference_fallback_kernels_match_autograd():
    """The kernels used on backends without a native one (CUDA/MPS today)."""
    gate, up = gate_up((6, 50), torch.float64)
    g = randn(6, 50, dtype=torch.float64)
    y64, (gg64, gu64) = grads(ops.swiglu_reference, (gate, up), g)
    assert_close(_swiglu_fallback(gate, up), y64, torch.float64)
    gg, gu = _swiglu_backward_fallback(g, gate, up)
    assert_close(gg, gg64, torch.float64)
    assert_close(gu, gu64, torch.float64)


def test_torch_compile_fullgraph():
    gate, up = gate_up((4, 48), torch.float32)
    gate.requires_grad_(True)
    up.requires_grad_(True)
    loss = lambda a, b: ops.swiglu(a, b).square().sum()  # noqa: E731
    f = torch.compile(loss, fullgraph=True, backend="aot_eager")
    f(gate, up).backward()
    _, (gg, gu) = grads(loss, (gate, up), None)
    torch.testing.assert_close(gate.grad, gg)
    torch.testing.assert_close(up.grad, gu)


BAD = [
    ((torch.zeros(4, 8), torch.zeros(4, 7)), ValueError,
     r"swiglu: gate and up must have the same shape, got gate \[4, 8\] and up \[4, 7\]"),
    ((torch.zeros(4, 8), torch.zeros(8)), ValueError, r"swiglu: gate and up must have the same shape"),
    ((torch.zeros(4, 8), torch.zeros(4, 8, dtype=torch.bfloat16)), TypeError,
     r"swiglu: gate \(.*\) and up \(.*\) must have the same dtype"),
    ((torch.zeros(4, 8, dtype=torch.int32), torch.zeros(4, 8, dtype=torch.int32)), TypeError,
     "swiglu: gate must be float32, bfloat16, float16 or float64"),
    ((torch.zeros(4, 8), torch.zeros(4, 8, dtype=torch.int64)), TypeError,
     "swiglu: up must be float32, bfloat16, float16 or float64"),
]


@pytest.mark.parametrize("args, exc, match", BAD)
@pytest.mark.parametrize("path", ["native", "fallback", "fake"])
def test_bad_input_is_a_clear_error(args, exc, match, path):
    if path == "native":
        fn = ops.swiglu
    elif path == "fallback":
        fn = _swiglu_fallback
    else:
        def fn(*a):
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                return ops.swiglu(*(mode.from_tensor(t) for t in a))
    with pytest.raises(exc, match=match):
        fn(*args)


@pytest.mark.parametrize("fn", [torch.ops.kr_mini_llm.swiglu_backward, _swiglu_backward_fallback])
def test_backward_rejects_bad_grad(fn):
    gate, up = torch.zeros(4, 8), torch.zeros(4, 8)
    with pytest.raises(ValueError, match=r"swiglu_backward: grad_out must match gate \[4, 8\], got \[4, 7\]"):
        fn(torch.zeros(4, 7), gate, up)
    with pytest.raises(TypeError, match=r"swiglu_backward: grad_out \(.*\) and gate \(.*\) must have the same dtype"):
        fn(torch.zeros(4, 8, dtype=torch.float64), gate, up)
    with pytest.raises(ValueError, match=r"swiglu_backward: gate and up must have the same shape"):
        fn(torch.zeros(4, 8), gate, torch.zeros(4, 9))
