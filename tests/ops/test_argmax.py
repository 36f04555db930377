import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.argmax import _argmax_fallback

from .utils import num_threads

FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# lengths around the vector widths (8 / 16 fp32 lanes, 4 / 8 fp64) and a vocabulary
LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 255, 8000, 32000]


def rows(shape, dtype, generator):
    return torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", LENGTHS)
def test_matches_torch_argmax(dtype, n):
    g = torch.Generator().manual_seed(n)
    x = rows((5, n), dtype, g)
    got = ops.argmax(x)
    assert got.dtype == torch.int64 and got.shape == (5,)
    assert torch.equal(got, torch.argmax(x, -1))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 9, 16, 17, 100])
def test_first_of_ties_and_nan_first(dtype, n):
    g = torch.Generator().manual_seed(7)
    x = rows((6, n), dtype, g)
    x[0] = 3.0                                   # all equal: index 0
    x[1, n // 2:] = 5.0                          # the max from the middle on
    x[2, -1] = math.inf                          # an inf at the very end (the scalar tail)
    x[3] = -math.inf                             # nothing but -inf
    x[4, n // 3] = math.nan                      # a NaN beats every number
    x[4, -1] = math.inf
    x[5, -1] = math.nan                          # two NaNs: the first wins
    x[5, n // 2] = math.nan
    assert torch.equal(ops.argmax(x), torch.argmax(x, -1))


@pytest.mark.parametrize("dtype", FLOATS)
def test_signed_zeros_tie(dtype):
    x = torch.full((4, 40), -1.0, dtype=dtype)
    x[0, 1], x[0, 2] = -0.0, 0.0    # in the scalar tail of a short row below
    x[1, 5], x[1, 20] = 0.0, -0.0   # in the vector part
    x[2, 3], x[2, 37] = -0.0, 0.0   # across the vector part and the tail
    x[3, 0], x[3, 17] = -0.0, -0.0
    assert torch.equal(ops.argmax(x), torch.argmax(x, -1))  # -0.0 == 0.0: the first
    assert torch.equal(ops.argmax(x[:1, :3]), torch.argmax(x[:1, :3], -1))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(1, 70), min_size=1, max_size=3), dtype=st.sampled_from(FLOATS),
       seed=st.integers(0, 2**31 - 1), specials=st.integers(0, 4), ties=st.booleans())
def test_generated_rows(shape, dtype, seed, specials, ties):
    g = torch.Generator().manual_seed(seed)
    x = rows(shape, dtype, g)
    if ties:
        top = x.amax(-1, keepdim=True)
        x = torch.where(x >= top - 0.3, top, x)
    flat = x.view(-1)
    for i in torch.randint(0, flat.numel(), (specials,), generator=g).tolist():
        flat[i] = [math.nan, math.inf, -math.inf, 0.0][i % 4]
    assert torch.equal(ops.argmax(x), torch.argmax(x, -1))


def test_strided_and_expanded_inputs():
    x = torch.randn(4, 64)
    for view in (x[:, ::2], x.t(), x[:1].expand(3, 64), x[1]):
        assert torch.equal(ops.argmax(view), torch.argmax(view, -1))


def test_threads_do_not_change_the_answer():
    x = torch.randn(300, 1000)
    x[:, 500] = x.amax(-1)  # a tie in every row
    with num_threads(1):
        one = ops.argmax(x)
    with num_threads(2):
        two = ops.argmax(x)
    assert torch.equal(one, two) and torch.equal(one, torch.argmax(x, -1))


def test_fallback_matches_native():
    x = torch.randn(3, 5, 41, dtype=torch.bfloat16)
    assert torch.equal(_argmax_fallback(x), ops.argmax(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    torch.library.opcheck(torch.ops.kr_mini_llm.argmax.default, (torch.randn(3, 37).to(dtype),))


@pytest.mark.parametrize("bad, kind, words", [
    (torch.zeros(3, 0), ValueError, "non-empty last dim"),
    (torch.tensor(1.0), ValueError, "at least one dim"),
    (torch.zeros(3, 4, dtype=torch.int64), TypeError, "must be float32, bfloat16, float16 or float64"),
])
def test_bad_input_is_named(bad, kind, words):
    for fn in (ops.argmax, _argmax_fallback):
        with pytest.raises(kind, match=words):
            fn(bad)
