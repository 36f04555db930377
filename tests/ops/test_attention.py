import math

import pytest
import torch

from kr_mini_llm import ops
from kr_mini_llm.ops.attention import _attention_backward_fallback, _attention_fallback

from .utils import DTYPES, assert_close, native_thread_invariance, num_threads, randn

A = torch.ops.kr_mini_llm


def make(B, Tq, Tk, Hq, Hkv, D, dtype=torch.float32):
    return randn(B, Tq, Hq, D, dtype=dtype), randn(B, Tk, Hkv, D, dtype=dtype), randn(B, Tk, Hkv, D, dtype=dtype)


def run(fn, q, k, v, go, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves, **kw)
    return out.detach(), torch.autograd.grad(out, leaves, go)


def check_against_reference(q, k, v, causal, scale=None, dtype=torch.float32, tol_scale=1.0):
    go = randn(*q.shape, dtype=dtype)
    out, gs = run(ops.attention, q, k, v, go, causal=causal, scale=scale)
    ref, grs = run(ops.attention_reference, q.double(), k.double(), v.double(), go.double(),
                   causal=causal, scale=scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, ref, dtype, scale=tol_scale, msg="out")
    for name, g, gr in zip("qkv", gs, grs):
        assert g.dtype == dtype
        # Gradients sum over the sequence (and, for k/v, over the query heads of a group):
        # their rounding grows with the length of these sums.
        n = max(q.shape[1], k.shape[1]) * (q.shape[2] // k.shape[2] if name != "q" else 1)
        s = tol_scale * (4 if dtype == torch.float32 else 2) * max(1.0, math.sqrt(n) / 4)
        assert_close(g, gr, dtype, scale=s, msg=f"grad_{name}")


# (B, T, Hq, Hkv, D): head dims 32..256 and an odd one (padded to even for the bf16 VNNI GEMMs),
# Hq:Hkv 1:1, 3:1, 4:1, 28:4, MQA; T = 1, odd, prime, a last KV block of one key (257).
SHAPES = [
    (1, 1, 4, 4, 64),
    (2, 1, 8, 2, 32),
    (1, 7, 4, 1, 32),
    (2, 17, 4, 4, 64),
    (1, 31, 8, 2, 80),
    (1, 67, 28, 4, 96),
    (2, 97, 4, 1, 64),
    (1, 130, 2, 2, 128),
    (1, 61, 4, 2, 256),
    (1, 257, 12, 4, 64),
    (2, 45, 6, 2, 33),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64_reference(shape, causal, dtype):
    B, T, Hq, Hkv, D = shape
    q, k, v = make(B, T, T, Hq, Hkv, D, dtype)
    check_against_reference(q, k, v, causal, dtype=dtype)


@pytest.mark.parametrize("Tq, Tk", [(1, 9), (5, 1), (13, 40), (70, 33), (3, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_causal_tq_ne_tk(Tq, Tk, dtype):
    q, k, v = make(2, Tq, Tk, 6, 2, 64, dtype)
    check_against_reference(q, k, v, False, dtype=dtype)


@pytest.mark.parametrize("scale", [0.05, 1.0, -0.3])
def test_custom_scale(scale):
    q, k, v = make(1, 45, 45, 4, 2, 48)
    check_against_reference(q, k, v, True, scale=scale)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = make(1, 20, 20, 2, 1, 64)
    torch.testing.assert_close(ops.attention(q, k, v), ops.attention(q, k, v, scale=0.125))
    assert not torch.allclose(ops.attention(q, k, v), ops.attention(q, k, v, scale=0.2))


def test_long_sequence_float32():
    q, k, v = make(1, 2048, 2048, 4, 1, 64)
    check_against_reference(q, k, v, True)


def test_lse_is_the_logsumexp_of_the_scaled_scores():
    q, k, v = make(2, 33, 33, 6, 3, 32, torch.float64)
    out, lse = A.attention(q, k, v, True, None)
    s = torch.einsum("bthd,bshd->bhts", q, k.repeat_interleave(2, dim=2)) / math.sqrt(32)
    s = s.masked_fill(torch.ones(33, 33, dtype=torch.bool).triu(1), float("-inf"))
    assert lse.shape == (2, 6, 33) and lse.dtype == torch.float64
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    _, lse32 = A.attention(q.float(), k.float(), v.float(), True, None)
    _, lse16 = A.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), True, None)
    assert lse32.dtype == torch.float32 and lse16.dtype == torch.float32


def test_gqa_equals_mha_with_repeated_kv():
    """A query head reads kv head h // (Hq / Hkv)."""
    q, k, v = make(2, 29, 29, 8, 2, 32, torch.float64)
    out = ops.attention(q, k, v)
    mha = ops.attention(q, k.repeat_interleave(4, dim=2), v.repeat_interleave(4, dim=2))
    torch.testing.assert_close(out, mha)


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(causal):
    q, k, v = make(2, 9, 9, 4, 2, 8, torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.attention(a, b, c, causal, 0.3), inputs)


def test_gradcheck_mqa_tq_ne_tk():
    q, k, v = make(1, 5, 11, 3, 1, 6, torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.attention(a, b, c, False), inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_opcheck(dtype, causal):
    q, k, v = make(2, 19, 19, 4, 2, 32, dtype)
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(A.attention.default, (q, k, v, causal, None))
    out, lse = A.attention(q, k, v, causal, None)
    go = randn(*q.shape, dtype=dtype)
    torch.library.opcheck(A.attention_backward.default,
                          (go, q.detach(), k.detach(), v.detach(), out.detach(), lse, causal, 0.2))


@native_thread_invariance
@pytest.mark.parametrize("shape", [(1, 300, 8, 2, 64), (3, 77, 4, 1, 80), (1, 520, 4, 4, 32)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_on_one_and_two_threads(shape, dtype):
    B, T, Hq, Hkv, D = shape
    q, k, v = make(B, T, T, Hq, Hkv, D, dtype)
    go = randn(*q.shape, dtype=dtype)
    with num_threads(1):
        o1, g1 = run(ops.attention, q, k, v, go)
    with num_threads(2):
        o2, g2 = run(ops.attention, q, k, v, go)
    assert torch.equal(o1, o2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_non_contiguous_inputs_from_fused_qkv_and_grad_out():
    B, T, Hq, Hkv, D = 2, 23, 6, 2, 32
    qkv = randn(B, T, (Hq + 2 * Hkv) * D)
    q = qkv[..., : Hq * D].view(B, T, Hq, D)
    k = qkv[..., Hq * D: (Hq + Hkv) * D].view(B, T, Hkv, D)
    v = qkv[..., (Hq + Hkv) * D:].view(B, T, Hkv, D)
    assert not q.is_contiguous() and not k.is_contiguous()
    go = randn(B, T, D, Hq).transpose(2, 3)  # non-contiguous grad_out
    out, gs = run(ops.attention, q, k, v, go)
    ref, grs = run(ops.attention_reference, q.double(), k.double(), v.double(), go.double())
    assert_close(out, ref, torch.float32)
    for g, gr in zip(gs, grs):
        assert_close(g, gr, torch.float32, scale=4)
    # A last dim that is not dense (copied internally).
    qs = randn(B, T, Hq, 2 * D)[..., ::2]
    assert_close(ops.attention(qs, k, v), ops.attention_reference(qs.double(), k.double(), v.double()),
                 torch.float32)


@pytest.mark.parametrize("causal, Tk", [(True, 21), (False, 21), (False, 8)])
def test_reference_fallback_kernels_match_autograd(causal, Tk):
    """The kernels used on backends without a native one (CUDA/MPS today)."""
    q, k, v = make(2, 21, Tk, 6, 2, 16, torch.float64)
    go = randn(*q.shape, dtype=torch.float64)
    ref, (gq, gk, gv) = run(ops.attention_reference, q, k, v, go, causal=causal, scale=0.4)
    out, lse = _attention_fallback(q, k, v, causal, 0.4)
    assert lse.shape == (2, 6, 21)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, A.attention(q, k, v, causal, 0.4)[1])
    fq, fk, fv = _attention_backward_fallback(go, q, k, v, out, lse, causal, 0.4)
    torch.testing.assert_close(fq, gq)
    torch.testing.assert_close(fk, gk)
    torch.testing.assert_close(fv, gv)


def test_torch_compile_fullgraph():
    q, k, v = make(2, 16, 16, 4, 2, 32)
    fn = lambda a, b, c: ops.attention(a, b, c).square().sum()  # noqa: E731
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.compile(fn, fullgraph=True, backend="aot_eager")(*leaves).backward()
    eager = [t.clone().requires_grad_() for t in (q, k, v)]
    fn(*eager).backward()
    for a, b in zip(leaves, eager):
        torch.testing.assert_close(a.grad, b.grad)


def test_empty_key_sequence_gives_zeros():
    q, k, v = make(1, 3, 0, 2, 1, 8)
    out, lse = A.attention(q, k, v, False, None)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()


@pytest.mark.parametrize("q, k, v, causal, exc, match", [
    (torch.randn(2, 4, 8), torch.randn(2, 4, 2, 8), torch.randn(2, 4, 2, 8), True, ValueError,
     r"q must be 4-D \[B, Tq, Hq, D\]"),
    (torch.randn(2, 4, 2, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8), True, ValueError,
     r"k must be 4-D \[B, Tk, Hkv, D\]"),
    (torch.randn(2, 4, 6, 8), torch.randn(2, 4, 4, 8), torch.randn(2, 4, 4, 8), True, ValueError,
     r"query heads Hq = 6 must be a multiple of the number of kv heads Hkv = 4"),
    (torch.randn(2, 4, 4, 8), torch.randn(2, 4, 2, 16), torch.randn(2, 4, 2, 16), True, ValueError,
     r"head_dim of k/v \(16\) must equal head_dim of q \(8\)"),
    (torch.randn(2, 4, 4, 8), torch.randn(2, 4, 2, 8), torch.randn(2, 4, 2, 16), True, ValueError,
     r"k and v must have the same shape \[B, Tk, Hkv, D\]"),
    (torch.randn(2, 4, 4, 8), torch.randn(2, 4, 2, 8), torch.randn(2, 5, 2, 8), False, ValueError,
     r"k and v must have the same shape"),
    (torch.randn(2, 4, 4, 8), torch.randn(3, 4, 2, 8), torch.randn(3, 4, 2, 8), True, ValueError,
     r"k/v must be \[B, Tk, Hkv, D\] with B = 2"),
    (torch.randn(2, 4, 4, 8), torch.randn(2, 4, 2, 8).bfloat16(), torch.randn(2, 4, 2, 8), True,
     TypeError, r"k \(BFloat16\) and q \(Float\) must have the same dtype"),
    (torch.randn(2, 4, 4, 8), torch.randn(2, 4, 2, 8), torch.randn(2, 4, 2, 8).double(), True,
     TypeError, r"v \(Double\) and q \(Float\) must have the same dtype"),
    (torch.ones(2, 4, 4, 8, dtype=torch.int32), torch.ones(2, 4, 2, 8, dtype=torch.int32),
     torch.ones(2, 4, 2, 8, dtype=torch.int32), True, TypeError, r"q must be float32, bfloat16"),
    (torch.randn(2, 4, 4, 8), torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8), True, ValueError,
     r"causal=True needs Tq == Tk, got Tq = 4 and Tk = 6"),
])
def test_bad_input_is_a_clear_error(q, k, v, causal, exc, match):
    with pytest.raises(exc, match=match):
        ops.attention(q, k, v, causal)


def test_backward_rejects_wrong_saved_tensors():
    q, k, v = make(1, 4, 4, 2, 1, 8)
    out, lse = A.attention(q, k, v, True, None)
    with pytest.raises(ValueError, match=r"lse must be the \[B, Hq, Tq\] = \[1, 2, 4\]"):
        A.attention_backward(out, q, k, v, out, lse[:, :1], True, None)
    with pytest.raises(ValueError, match=r"grad_out must be \[B, Tq, Hq, D\]"):
        A.attention_backward(out[:, :2], q, k, v, out, lse, True, None)
    with pytest.raises(TypeError, match=r"grad_out \(BFloat16\) and q \(Float\) must have the same dtype"):
        A.attention_backward(out.bfloat16(), q, k, v, out, lse, True, None)
