import pytest
import torch

from kr_mini_llm import ops
from kr_mini_llm.ops.rotary import _rotary_backward_fallback, _rotary_fallback

from .utils import DTYPES, assert_close, grads, num_threads, randn

# (B, T, H, D): T = 1, odd/prime sizes, head_dims 32..256 incl. 80 (D/2 not a multiple of the
# vector width), D = 2 and D/2 prime.
SHAPES = [
    (1, 1, 1, 32), (2, 1, 3, 64), (1, 7, 5, 80), (3, 13, 2, 96), (2, 5, 7, 128), (1, 3, 1, 256),
    (2, 17, 12, 64), (1, 2, 3, 2), (2, 3, 3, 34), (1, 4, 16, 64),
]


def tables(shape, layout, dtype=torch.float32, theta=10000.0):
    """Real RoPE tables: shared positions [T, D/2] or random per-sequence ones [B, T, D/2]."""
    B, T, _, D = shape
    if layout == "shared":
        return ops.rope_tables(D, T, theta=theta, dtype=dtype)
    pos = torch.randint(0, 4096, (B, T))
    return ops.rope_tables(D, pos, theta=theta, dtype=dtype)


def ref64(x, cos, sin):
    return ops.rotary_reference(x.double(), cos.double(), sin.double())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["shared", "per_batch"])
@pytest.mark.parametrize("table_dtype", ["float32", "same"])
def test_forward_backward_match_float64_reference(shape, dtype, layout, table_dtype):
    tdtype = torch.float32 if table_dtype == "float32" else dtype
    cos, sin = tables(shape, layout, tdtype)
    x = randn(*shape, dtype=dtype)
    g = randn(*shape, dtype=dtype)
    y, (gx, *_) = grads(lambda a: ops.rotary(a, cos, sin), (x,), g)
    y64, (gx64, *_) = grads(lambda a: ref64(a, cos, sin), (x.double(),), g.double())
    assert y.dtype == dtype and gx.dtype == dtype and y.is_contiguous()
    assert_close(y, y64, dtype, msg="out")
    assert_close(gx, gx64, dtype, msg="grad_x")


@pytest.mark.parametrize("layout", ["shared", "per_batch"])
def test_float64(layout):
    shape = (2, 9, 3, 96)
    cos, sin = tables(shape, layout, torch.float64)
    x, g = randn(*shape, dtype=torch.float64), randn(*shape, dtype=torch.float64)
    y, (gx,) = grads(lambda a: ops.rotary(a, cos, sin), (x,), g)
    y64, (gx64,) = grads(lambda a: ops.rotary_reference(a, cos, sin), (x,), g)
    assert_close(y, y64, torch.float64)
    assert_close(gx, gx64, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_sequence_large_theta(dtype):
    shape = (1, 2048, 3, 128)
    cos, sin = ops.rope_tables(128, 2048, theta=1e6)
    x, g = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    y, (gx,) = grads(lambda a: ops.rotary(a, cos, sin), (x,), g)
    y64, (gx64,) = grads(lambda a: ref64(a, cos, sin), (x.double(),), g.double())
    assert_close(y, y64, dtype)
    assert_close(gx, gx64, dtype)


def test_rotation_preserves_pairs_and_backward_inverts_forward():
    """Properties independent of the reference: |(x1, x2)| is kept and rotary_backward undoes rotary."""
    x = randn(2, 6, 4, 64, dtype=torch.float64)
    cos, sin = ops.rope_tables(64, 6, dtype=torch.float64)
    y = ops.rotary(x, cos, sin)
    norm = lambda t: t[..., :32].square() + t[..., 32:].square()  # noqa: E731
    assert_close(norm(y), norm(x), torch.float64)
    assert_close(torch.ops.kr_mini_llm.rotary_backward(y, cos, sin), x, torch.float64)
    # position 0 is the identity
    assert torch.equal(y[:, 0], x[:, 0])


def test_matches_hf_apply_rotary_pos_emb():
    """Our tables + kernel against HF Llama's rotary embedding and apply_rotary_pos_emb."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    B, T, H, D = 2, 11, 3, 64
    cfg = LlamaConfig(hidden_size=H * D, num_attention_heads=H, head_dim=D, max_position_embeddings=64,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    pos = torch.tensor([list(range(T)), list(range(20, 20 + T))])
    q, k = randn(B, T, H, D), randn(B, T, 1, D)
    hf_cos, hf_sin = llama.LlamaRotaryEmbedding(cfg)(q, pos)
    hq, hk = llama.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), hf_cos, hf_sin)
    cos, sin = ops.rope_tables(D, pos, theta=1e6)
    torch.testing.assert_close(ops.rotary(q, cos, sin), hq.transpose(1, 2))
    torch.testing.assert_close(ops.rotary(k, cos, sin), hk.transpose(1, 2))


def test_strided_views_of_a_fused_qkv_projection():
    B, T, Hq, Hkv, D = 2, 7, 6, 2, 80
    qkv = randn(B, T, (Hq + 2 * Hkv) * D, requires_grad=True)
    cos, sin = tables((B, T, Hq, D), "per_batch")
    q, k, _ = qkv.view(B, T, Hq + 2 * Hkv, D).split([Hq, Hkv, Hkv], dim=2)
    assert not q.is_contiguous() and not k.is_contiguous()
    gq, gk = randn(B, T, Hq, D), randn(B, T, Hkv, D)
    out_q, out_k = ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)
    assert out_q.is_contiguous() and out_k.is_contiguous()
    torch.autograd.backward([out_q, out_k], [gq, gk])
    qkv64 = qkv.detach().double().requires_grad_(True)
    q64, k64, _ = qkv64.view(B, T, Hq + 2 * Hkv, D).split([Hq, Hkv, Hkv], dim=2)
    rq, rk = ref64(q64, cos, sin), ref64(k64, cos, sin)
    torch.autograd.backward([rq, rk], [gq.double(), gk.double()])
    assert_close(out_q, rq, torch.float32)
    assert_close(out_k, rk, torch.float32)
    assert_close(qkv.grad, qkv64.grad, torch.float32)


def test_views_with_non_unit_last_stride_and_strided_grad():
    x = randn(2, 5, 64, 3).transpose(2, 3)  # [2, 5, 3, 64], last-dim stride 3
    cos, sin = tables(x.shape, "shared")
    assert_close(ops.rotary(x, cos, sin), ref64(x, cos, sin), torch.float32)
    g = randn(2, 5, 64, 3).transpose(2, 3)
    gx = torch.ops.kr_mini_llm.rotary_backward(g, cos, sin)
    _, (gx64,) = grads(lambda a: ref64(a, cos, sin), (x.double(),), g.double())
    assert_close(gx, gx64, torch.float32)


def test_empty_inputs():
    for shape in [(0, 3, 2, 8), (2, 0, 2, 8), (2, 3, 0, 8)]:
        cos, sin = torch.zeros(shape[1], 4), torch.zeros(shape[1], 4)
        assert ops.rotary(torch.zeros(shape), cos, sin).shape == shape


def test_tables_get_no_gradient():
    x = randn(1, 3, 2, 8, requires_grad=True)
    cos, sin = ops.rope_tables(8, 3)
    cos.requires_grad_(True)
    sin.requires_grad_(True)
    ops.rotary(x, cos, sin).sum().backward()
    assert x.grad is not None and cos.grad is None and sin.grad is None


@pytest.mark.parametrize("layout", ["shared", "per_batch"])
def test_gradcheck(layout):
    shape = (2, 3, 3, 10)
    cos, sin = tables(shape, layout, torch.float64)
    x = randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ops.rotary(a, cos, sin), (x,))
    assert torch.autograd.gradgradcheck(lambda a: ops.rotary(a, cos, sin), (x,))


@pytest.mark.parametrize("dtype, layout", [(torch.float32, "shared"), (torch.bfloat16, "per_batch"),
                                           (torch.float16, "shared")])
def test_opcheck(dtype, layout):
    shape = (2, 5, 3, 48)
    cos, sin = tables(shape, layout)
    x = randn(*shape, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.kr_mini_llm.rotary.default, (x, cos, sin))
    torch.library.opcheck(torch.ops.kr_mini_llm.rotary_backward.default, (randn(*shape, dtype=dtype), cos, sin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_on_one_and_two_threads(dtype):
    shape = (3, 129, 5, 80)  # enough rows to be split across threads
    cos, sin = tables(shape, "per_batch")
    x, g = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    with num_threads(1):
        y1, (g1,) = grads(lambda a: ops.rotary(a, cos, sin), (x,), g)
    with num_threads(2):
        y2, (g2,) = grads(lambda a: ops.rotary(a, cos, sin), (x,), g)
    assert torch.equal(y1, y2) and torch.equal(g1, g2)


@pytest.mark.parametrize("layout", ["shared", "per_batch"])
def test_reference_fallback_kernels_match_autograd(layout):
    """The kernels used on backends without a native one (CUDA/MPS today)."""
    shape = (2, 4, 3, 18)
    cos, sin = tables(shape, layout, torch.float64)
    x, g = randn(*shape, dtype=torch.float64), randn(*shape, dtype=torch.float64)
    y64, (gx64,) = grads(lambda a: ops.rotary_reference(a, cos, sin), (x,), g)
    assert_close(_rotary_fallback(x, cos, sin), y64, torch.float64)
    assert_close(_rotary_backward_fallback(g, cos, sin), gx64, torch.float64)
    # bf16 input with fp32 tables, as the CPU kernel
    xb, gb = x.bfloat16(), g.bfloat16()
    c32, s32 = cos.float(), sin.float()
    torch.testing.assert_close(_rotary_fallback(xb, c32, s32), ops.rotary(xb, c32, s32), atol=8e-3, rtol=8e-3)
    torch.testing.assert_close(_rotary_backward_fallback(gb, c32, s32),
                               torch.ops.kr_mini_llm.rotary_backward(gb, c32, s32), atol=8e-3, rtol=8e-3)


def test_torch_compile_fullgraph():
    x = randn(2, 5, 3, 32, requires_grad=True)
    cos, sin = ops.rope_tables(32, 5)
    loss = lambda a: ops.rotary(a, cos, sin).square().mul(torch.arange(32.0)).sum()  # noqa: E731
    f = torch.compile(loss, fullgraph=True, backend="aot_eager")
    f(x).backward()
    _, (gx,) = grads(loss, (x,), None)
    torch.testing.assert_close(x.grad, gx)


def _bad(shape=(2, 3, 4, 8), t_shape=(3, 4), dtype=torch.float32, t_dtype=torch.float32, s_shape=None,
         s_dtype=None):
    return (torch.zeros(shape, dtype=dtype), torch.zeros(t_shape, dtype=t_dtype),
            torch.zeros(s_shape or t_shape, dtype=s_dtype or t_dtype))


BAD = [
    (_bad(shape=(3, 4, 8)), ValueError, r"x must be 4-D \[B, T, H, D\], got shape \[3, 4, 8\]"),
    (_bad(shape=(2, 3, 4, 7), t_shape=(3, 3)), ValueError,
     r"x \[B, T, H, D\] must have an even head_dim D, got shape \[2, 3, 4, 7\]"),
    (_bad(t_shape=(5, 4)), ValueError, r"cos/sin must be \[T, D/2\] = \[3, 4\] or \[B, T, D/2\] = \[2, 3, 4\]"),
    (_bad(t_shape=(3, 8)), ValueError, r"cos/sin must be \[T, D/2\] = \[3, 4\]"),
    (_bad(t_shape=(3, 4), s_shape=(2, 3, 4)), ValueError, "cos and sin must have the same shape"),
    (_bad(t_shape=(1, 3, 4)), ValueError,  # batch mismatch in [B, T, D/2] tables
     r"cos/sin must be \[T, D/2\] = \[3, 4\] or \[B, T, D/2\] = \[2, 3, 4\] for x \[2, 3, 4, 8\], "
     r"got \[1, 3, 4\]"),
    (_bad(t_shape=(4,)), ValueError, r"cos/sin must be \[T, D/2\]"),
    (_bad(dtype=torch.int32), TypeError, "x must be float32, bfloat16, float16 or float64"),
    (_bad(t_dtype=torch.int64), TypeError, "cos must be float32, bfloat16, float16 or float64"),
    (_bad(s_dtype=torch.float64), TypeError, r"cos \(.*\) and sin \(.*\) must have the same dtype"),
    (_bad(dtype=torch.float16, t_dtype=torch.bfloat16), TypeError, r"cos/sin must be float32 or x's dtype"),
    (_bad(dtype=torch.float32, t_dtype=torch.float64), TypeError, r"cos/sin must be float32 or x's dtype"),
]


@pytest.mark.parametrize("args, exc, match", BAD)
@pytest.mark.parametrize("path", ["native", "fallback", "fake"])
def test_bad_input_is_a_clear_error(args, exc, match, path):
    if path == "native":
        fn = ops.rotary
    elif path == "fallback":
        fn = _rotary_fallback
    else:
        def fn(*a):
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                return ops.rotary(*(mode.from_tensor(t) for t in a))
    with pytest.raises(exc, match="rotary: " + match):
        fn(*args)


def test_backward_rejects_bad_grad():
    cos, sin = torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"rotary_backward: grad_out must be 4-D"):
        torch.ops.kr_mini_llm.rotary_backward(torch.zeros(3, 4, 8), cos, sin)
    with pytest.raises(ValueError, match=r"rotary_backward: cos/sin must be \[T, D/2\] = \[3, 5\]"):
        torch.ops.kr_mini_llm.rotary_backward(torch.zeros(1, 3, 2, 10), cos, sin)
