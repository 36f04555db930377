import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.dropout import _dropout_fallback, keep_mask

from .utils import grads, native_thread_invariance, num_threads


def randn(*shape, dtype=torch.float32, requires_grad=False):
    return torch.randn(tuple(shape), dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

SHAPES = [(), (1,), (7,), (3, 33), (2, 5, 17), (1, 1, 1), (4, 2048), (2, 3, 1025), (31, 97)]
ALL_FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def seed_of(value: int) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64)


def expected(x, seed, p):
    """x * keep / (1 - p), the mask from keep_mask, the product in float64 and rounded once (the
    fp32/float64 product of the kernel is that rounding for every dtype here: one factor is 0 or
    a single 1 / (1 - p))."""
    keep = keep_mask(x.numel(), seed, p).reshape(x.shape)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(acc) * (keep.to(acc) * (1.0 / (1.0 - p)))).to(x.dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ALL_FLOATS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_forward_and_backward_are_the_reference_bit_for_bit(shape, dtype, p):
    x = randn(*shape, dtype=dtype)
    g = randn(*shape, dtype=dtype)
    seed = seed_of(torch.randint(-2**63, 2**63 - 1, ()).item())
    y, (gx,) = grads(lambda t: ops.dropout(t, p, seed=seed), (x,), g)
    y_ref, (gx_ref,) = grads(lambda t: ops.dropout_reference(t, p, seed=seed), (x,), g)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    assert torch.equal(y, expected(x, seed, p))
    # the backward keeps and scales the same elements as the forward
    assert torch.equal(gx, expected(g, seed, p))


def test_float64_reference_is_the_definition():
    """keep_mask written out element by element for a few indices, in Python integers."""
    def mix(v):
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)

    seed = -1234567890123456789
    s = seed & 0xFFFFFFFFFFFFFFFF
    k0, k1 = s & 0xFFFFFFFF, s >> 32
    a, b = mix(k0 ^ mix(k1)), mix(k1)  # b: the high half of every index here is 0
    p = 0.37
    mask = keep_mask(300, seed_of(seed), p)
    for i in range(300):
        u = mix((mix(i ^ a) + b) & 0xFFFFFFFF)
        assert bool(mask[i]) == (u >= math.floor(p * 2**32)), i


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.95])
def test_keeps_one_minus_p_of_the_elements(p):
    n = 1 << 20
    y = ops.dropout(torch.ones(n), p)
    kept = int((y != 0).sum())
    sd = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 6 * sd, (kept, n * (1 - p))
    assert torch.all((y == 0) | (y == torch.tensor(1 / (1 - p), dtype=torch.float32)))
    # no pattern along the index: every 1024-element stretch keeps about as many
    per = (y != 0).reshape(-1, 1024).sum(1).double()
    assert abs(per.mean().item() - 1024 * (1 - p)) < 6 * math.sqrt(1024 * p * (1 - p)) / 32
    assert per.std().item() < 1.5 * math.sqrt(1024 * p * (1 - p))


def test_neighbouring_elements_and_seeds_are_independent():
    n = 1 << 18
    a = (ops.dropout(torch.ones(n), 0.5, seed=seed_of(1)) != 0).double()
    b = (ops.dropout(torch.ones(n), 0.5, seed=seed_of(2)) != 0).double()  # a neighbouring seed
    c = (ops.dropout(torch.ones(n), 0.5, seed=seed_of(1 + (1 << 32))) != 0).double()  # another high half
    bound = 6 / math.sqrt(n)
    pairs = [(a, b), (a, c), (a[1:], a[:-1]), (a[1024:], a[:-1024])]
    pairs += [(a[d:], b[:-d]) for d in (1, 2, 1024)] + [(b[d:], a[:-d]) for d in (1, 2, 1024)]  # no shifted copies
    for u, v in pairs:
        assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < bound


def test_seed_none_follows_torch_manual_seed():
    x = randn(64, 33)
    torch.manual_seed(3)
    a = ops.dropout(x, 0.3)
    torch.manual_seed(3)
    b = ops.dropout(x, 0.3)
    c = ops.dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(b, c)
    torch.manual_seed(3)
    assert torch.equal(ops.dropout_reference(x, 0.3), a), "the reference draws the seed the same way"


def test_not_training_or_p_zero_is_the_input_itself():
    x = randn(5, 7)
    assert ops.dropout(x, 0.5, training=False) is x
    assert ops.dropout(x, 0.0) is x


def test_non_contiguous_input_is_read_in_logical_order():
    x = randn(40, 9).T
    seed = seed_of(99)
    assert torch.equal(ops.dropout(x, 0.4, seed=seed), ops.dropout(x.contiguous(), 0.4, seed=seed))


def test_nan_and_inf_propagate_where_kept():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 64)
    y = ops.dropout(x, 0.5, seed=seed_of(5))
    assert torch.equal(torch.isnan(y), torch.isnan(expected(x, seed_of(5), 0.5)))


def test_gradcheck():
    x = randn(3, 4, 13, dtype=torch.float64, requires_grad=True)
    seed = seed_of(11)
    assert torch.autograd.gradcheck(lambda t: ops.dropout(t, 0.3, seed=seed), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.dropout(t, 0.3, seed=seed), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck(dtype):
    x = randn(4, 3, 40, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.kr_mini_llm.dropout.default, (x, seed_of(21), 0.25))


@native_thread_invariance
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_on_one_and_two_threads(dtype):
    x = randn(301, 1001, dtype=dtype)
    with num_threads(1):
        a = ops.dropout(x, 0.2, seed=seed_of(8))
    with num_threads(2):
        b = ops.dropout(x, 0.2, seed=seed_of(8))
    assert torch.equal(a, b)


def test_fallback_kernel_is_the_native_kernel():
    """The kernel backends without a native one run (CUDA/MPS today): the same mask, the same bits,
    and like the native kernel a new tensor even at p == 0."""
    x = randn(6, 50, dtype=torch.bfloat16)
    assert torch.equal(_dropout_fallback(x, seed_of(4), 0.3), ops.dropout(x, 0.3, seed=seed_of(4)))
    for fn in (_dropout_fallback, torch.ops.kr_mini_llm.dropout):
        y = fn(x, seed_of(4), 0.0)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_torch_compile_fullgraph():
    x = randn(4, 48, requires_grad=True)
    seed = seed_of(31)
    loss = lambda t: ops.dropout(t, 0.3, seed=seed).square().sum()  # noqa: E731
    torch.compile(loss, fullgraph=True, backend="aot_eager")(x).backward()
    _, (gx,) = grads(loss, (x,), None)
    assert torch.equal(x.grad, gx)


def test_activation_checkpointing_recomputes_the_same_mask():
    """torch.utils.checkpoint restores the CPU generator before recomputing: the seed drawn again is
    the same, so the gradient is the one without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    x = randn(8, 64, requires_grad=True)
    w = randn(64, 64)
    f = lambda t: ops.dropout(t @ w, 0.5).tanh()  # noqa: E731
    torch.manual_seed(0)
    f(x).sum().backward()
    plain, x.grad = x.grad, None
    torch.manual_seed(0)
    checkpoint(f, x, use_reentrant=False).sum().backward()
    assert torch.equal(plain, x.grad)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=3), p=st.floats(0.0, 0.999),
       seed=st.integers(-2**63, 2**63 - 1), dtype=st.sampled_from(ALL_FLOATS))
def test_generated_inputs_match_the_reference(shape, p, seed, dtype):
    x = randn(*shape, dtype=dtype)
    s = seed_of(seed)
    y = torch.ops.kr_mini_llm.dropout(x, s, p)
    assert torch.equal(y, expected(x, s, p))


BAD = [
    ((torch.zeros(4, dtype=torch.int32), seed_of(1), 0.1), TypeError,
     "dropout: x must be float32, bfloat16, float16 or float64"),
    ((torch.zeros(4), torch.tensor(1, dtype=torch.int32), 0.1), TypeError, "dropout: seed must be int64, got Int"),
    ((torch.zeros(4), torch.tensor([1]), 0.1), ValueError, r"dropout: seed must be a 0-d tensor, got \[1\]"),
    ((torch.zeros(4), seed_of(1), 1.0), ValueError, r"dropout: p must be in \[0, 1\), got 1$"),
    ((torch.zeros(4), seed_of(1), 1.0000001), ValueError, r"dropout: p must be in \[0, 1\), got 1$"),
    ((torch.zeros(4), seed_of(1), -0.1), ValueError, r"dropout: p must be in \[0, 1\), got -0.1$"),
    ((torch.zeros(4), seed_of(1), float("nan")), ValueError, r"dropout: p must be in \[0, 1\), got nan$"),
]


@pytest.mark.parametrize("args, exc, match", BAD)
@pytest.mark.parametrize("path", ["native", "fallback", "fake"])
def test_bad_input_is_a_clear_error(args, exc, match, path):
    if path == "native":
        fn = torch.ops.kr_mini_llm.dropout
    elif path == "fallback":
        fn = _dropout_fallback
    else:
        def fn(x, seed, p):
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                return torch.ops.kr_mini_llm.dropout(mode.from_tensor(x), mode.from_tensor(seed), p)
    with pytest.raises(exc, match=match):
        fn(*args)
