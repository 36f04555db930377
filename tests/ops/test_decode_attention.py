import pytest
import torch

from kr_mini_llm import ops
from kr_mini_llm.ops.decode_attention import (_decode_attention_fallback,
                                              _kv_cache_append_fallback)

from .utils import assert_close, native_thread_invariance, num_threads, randn

dec = torch.ops.kr_mini_llm.decode_attention
app = torch.ops.kr_mini_llm.kv_cache_append


def make(B, S, Hq, Hkv, D, Tmax, lens, dtype=torch.float32, lens_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = randn(B, S, Hq, D, dtype=dtype, generator=g)
    kc = randn(B, Tmax, Hkv, D, dtype=dtype, generator=g)
    vc = randn(B, Tmax, Hkv, D, dtype=dtype, generator=g)
    return q, kc, vc, torch.tensor(lens, dtype=lens_dtype)


def full_causal_attention(q, k, v, scale=None):
    """Plain softmax(QK^T)V with a causal mask over whole sequences [T, H, D], in float64."""
    T, Hq, D = q.shape
    G = Hq // k.shape[1]
    k = k.double().repeat_interleave(G, dim=1)
    v = v.double().repeat_interleave(G, dim=1)
    s = torch.einsum("thd,uhd->htu", q.double(), k) * (D ** -0.5 if scale is None else scale)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("htu,uhd->thd", s.softmax(-1), v)


# (B, S, Hq, Hkv, D, Tmax, lens): lens == S (no history), == Tmax, odd/prime sizes, lengths
# past the split length (512) so the split-and-combine path runs, S*G past one row block (32).
CASES = [
    (1, 1, 1, 1, 32, 1, [1]),
    (3, 1, 4, 4, 64, 37, [1, 37, 20]),
    (2, 1, 8, 2, 80, 53, [53, 2]),
    (3, 1, 28, 4, 128, 600, [1, 600, 513]),
    (2, 1, 7, 1, 256, 19, [19, 5]),
    (2, 3, 4, 4, 32, 41, [3, 41]),
    (3, 5, 8, 2, 64, 1100, [5, 1100, 777]),
    (2, 4, 28, 4, 80, 29, [4, 29]),
    (2, 2, 6, 1, 128, 31, [31, 2]),
    (1, 7, 12, 1, 96, 23, [23]),
    (2, 11, 3, 3, 256, 13, [11, 13]),
]


def _check_forward(case, dtype, scale=None, lens_dtype=torch.int64):
    B, S, Hq, Hkv, D, Tmax, lens = case
    q, kc, vc, cl = make(B, S, Hq, Hkv, D, Tmax, lens, dtype, lens_dtype)
    out = ops.decode_attention(q, kc, vc, cl, scale)
    ref = ops.decode_attention_reference(q.double(), kc.double(), vc.double(), cl, scale)
    assert out.dtype == dtype and out.shape == (B, S, Hq, D) and out.is_contiguous()
    assert_close(out, ref, dtype, msg=str(case))


@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_float64_reference(case, dtype):
    _check_forward(case, dtype)


@pytest.mark.parametrize("case", CASES[1:9:2], ids=[str(c[:6]) for c in CASES[1:9:2]])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_reduced_precision(case, dtype):
    _check_forward(case, dtype)


@pytest.mark.parametrize("scale", [0.3, 1.7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_explicit_scale_and_int32_lens(scale, dtype):
    # bf16 with D = 64 / 128: the bf16 dot-product scores where the CPU has them (the scale after the sum)
    _check_forward((2, 3, 8, 2, 64, 45, [3, 40]), dtype, scale, torch.int32)
    _check_forward((1, 2, 4, 2, 128, 20, [20]), dtype, scale, torch.int32)


def test_non_contiguous_q():
    q, kc, vc, cl = make(2, 3, 8, 2, 32, 20, [7, 20])
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    assert torch.equal(ops.decode_attention(qt, kc, vc, cl), ops.decode_attention(q, kc, vc, cl))


def test_rows_past_cache_lens_are_ignored():
    q, kc, vc, cl = make(2, 2, 4, 2, 32, 30, [9, 17])
    out = ops.decode_attention(q, kc, vc, cl)
    for b, L in enumerate(cl.tolist()):
        kc[b, L:] = float("nan")
        vc[b, L:] = 1e4
    torch.testing.assert_close(ops.decode_attention(q, kc, vc, cl), out, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Hq, Hkv, D", [(4, 4, 32), (8, 2, 64), (28, 4, 80), (6, 1, 128)])
def test_incremental_decode_equals_full_causal_attention(dtype, Hq, Hkv, D):
    """Prefill each sequence (different lengths), then append one token at a time and in
    chunks, calling decode_attention after each append: every output must equal full causal
    attention over the whole sequences."""
    B, T, Tmax = 2, 40, 48
    prompt = [5, 1]
    steps = [1, 1, 3, 1, 4, 2, 7, 1]  # tokens per step, shared by the batch
    total = [p + sum(steps) for p in prompt]
    g = torch.Generator().manual_seed(1)
    q = randn(B, T, Hq, D, dtype=dtype, generator=g)
    k = randn(B, T, Hkv, D, dtype=dtype, generator=g)
    v = randn(B, T, Hkv, D, dtype=dtype, generator=g)
    kc = torch.zeros(B, Tmax, Hkv, D, dtype=dtype)
    vc = torch.zeros_like(kc)
    lens = torch.zeros(B, dtype=torch.int64)
    got = [[None] * total[b] for b in range(B)]
    for b in range(B):  # prefill of one sequence through a batch-1 view of the caches
        P = prompt[b]
        ops.kv_cache_append(kc[b:b + 1], vc[b:b + 1], k[b:b + 1, :P], v[b:b + 1, :P], lens[b:b + 1])
        lens[b] += P
        out = ops.decode_attention(q[b:b + 1, :P], kc[b:b + 1], vc[b:b + 1], lens[b:b + 1])
        for s in range(P):
            got[b][s] = out[0, s]
    for S in steps:
        idx = torch.stack([torch.arange(L, L + S) for L in lens.tolist()])  # [B, S]
        take = lambda x: torch.stack([x[b, idx[b]] for b in range(B)])  # noqa: E731
        before = lens.clone()
        ops.kv_cache_append(kc, vc, take(k), take(v), lens)
        assert torch.equal(lens, before), "kv_cache_append must not change cache_lens"
        lens += S
        out = ops.decode_attention(take(q), kc, vc, lens)
        for b in range(B):
            for s in range(S):
                got[b][int(idx[b, s])] = out[b, s]
    for b in range(B):
        n = total[b]
        ref = full_causal_attention(q[b, :n], k[b, :n], v[b, :n])
        assert_close(torch.stack(got[b]), ref, dtype, msg=f"sequence {b}")
        assert torch.equal(kc[b, :n], k[b, :n]) and torch.equal(vc[b, :n], v[b, :n])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("lens_dtype", [torch.int32, torch.int64])
def test_kv_cache_append_matches_reference(dtype, lens_dtype):
    B, S, Hkv, D, Tmax = 3, 4, 2, 40, 17
    g = torch.Generator().manual_seed(2)
    kc = randn(B, Tmax, Hkv, D, dtype=dtype, generator=g)
    vc = randn(B, Tmax, Hkv, D, dtype=dtype, generator=g)
    kn = randn(B, S, Hkv, D, dtype=dtype, generator=g)
    vn = randn(B, S, Hkv, D, dtype=dtype, generator=g)
    lens = torch.tensor([0, 13, 6], dtype=lens_dtype)
    kr, vr = kc.clone(), vc.clone()
    ops.kv_cache_append_reference(kr, vr, kn, vn, lens)
    assert ops.kv_cache_append(kc, vc, kn.transpose(1, 2).contiguous().transpose(1, 2), vn, lens) is None
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    assert torch.equal(lens, torch.tensor([0, 13, 6], dtype=lens_dtype))
    for b, L in enumerate(lens.tolist()):  # the reference itself: rows written, the rest intact
        assert torch.equal(kr[b, L:L + S], kn[b]) and torch.equal(vr[b, L:L + S], vn[b])


@native_thread_invariance
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(2, 1, 12, 4, 64, 1500, [1500, 700]),
                                  (3, 4, 16, 4, 80, 900, [4, 900, 600]),
                                  (1, 20, 8, 2, 64, 300, [290])])
def test_same_bits_on_one_and_two_threads(dtype, case):
    B, S, Hq, Hkv, D, Tmax, lens = case
    q, kc, vc, cl = make(B, S, Hq, Hkv, D, Tmax, lens, dtype)
    with num_threads(1):
        o1 = ops.decode_attention(q, kc, vc, cl)
    with num_threads(2):
        o2 = ops.decode_attention(q, kc, vc, cl)
    assert torch.equal(o1, o2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S, Hq, Hkv, lens, lens_dtype", [
    (1, 8, 2, [9, 1], torch.int64), (3, 6, 1, [3, 11], torch.int32), (2, 4, 4, [600, 2], torch.int64)])
def test_opcheck(dtype, S, Hq, Hkv, lens, lens_dtype):
    q, kc, vc, cl = make(2, S, Hq, Hkv, 32, 600, lens, dtype, lens_dtype)
    torch.library.opcheck(dec.default, (q, kc, vc, cl, None))
    torch.library.opcheck(dec.default, (q, kc, vc, cl, 0.5))
    kn, vn = randn(2, S, Hkv, 32, dtype=dtype), randn(2, S, Hkv, 32, dtype=dtype)
    torch.library.opcheck(app.default, (kc, vc, kn, vn, torch.tensor([0, 5], dtype=lens_dtype)))


def test_fallback_kernels_match_reference_and_native():
    """The kernels used on backends without a native one (CUDA/MPS today)."""
    q, kc, vc, cl = make(3, 2, 8, 2, 48, 30, [2, 30, 17], torch.float64)
    ref = ops.decode_attention_reference(q, kc, vc, cl)
    assert_close(_decode_attention_fallback(q, kc, vc, cl, None), ref, torch.float64)
    assert_close(_decode_attention_fallback(q, kc, vc, cl, 0.2),
                 ops.decode_attention_reference(q, kc, vc, cl, 0.2), torch.float64)
    assert_close(ops.decode_attention(q, kc, vc, cl), ref, torch.float64)
    kn, vn = randn(3, 2, 2, 48, dtype=torch.float64), randn(3, 2, 2, 48, dtype=torch.float64)
    lens = torch.tensor([0, 28, 9])
    k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    _kv_cache_append_fallback(k1, v1, kn, vn, lens)
    ops.kv_cache_append(k2, v2, kn, vn, lens)
    assert torch.equal(k1, k2) and torch.equal(v1, v2) and not torch.equal(k1, kc)


def test_backward_is_a_clear_error():
    q, kc, vc, cl = make(1, 1, 4, 2, 32, 8, [5])
    q.requires_grad_(True)
    out = ops.decode_attention(q, kc, vc, cl)
    assert out.requires_grad
    with pytest.raises(RuntimeError, match=r"inference-only.*kr_mini_llm\.ops\.attention"):
        out.sum().backward()
    with torch.no_grad():
        assert not ops.decode_attention(q, kc, vc, cl).requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_append_then_decode(dtype):
    B, S, Hq, Hkv, D, Tmax = 2, 2, 8, 2, 64, 24
    q, kc, vc, _ = make(B, S, Hq, Hkv, D, Tmax, [0, 0], dtype)
    kn, vn = randn(B, S, Hkv, D, dtype=dtype), randn(B, S, Hkv, D, dtype=dtype)
    lens = torch.tensor([3, 20])

    def step(q, kc, vc, kn, vn, lens):
        ops.kv_cache_append(kc, vc, kn, vn, lens)
        return ops.decode_attention(q, kc, vc, lens + q.shape[1])

    ke, ve, kk, vv = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    expected = step(q, ke, ve, kn, vn, lens)
    f = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = f(q, kk, vv, kn, vn, lens)
    assert torch.equal(got, expected)
    assert torch.equal(kk, ke) and torch.equal(vv, ve) and not torch.equal(kk, kc)
    ref = ops.decode_attention_reference(q.double(), ke.double(), ve.double(), lens + S)
    assert_close(got, ref, dtype)


def _bad(**kw):
    """Valid decode/append arguments with some replaced."""
    a = dict(q=randn(2, 3, 8, 32), k_cache=randn(2, 16, 2, 32), v_cache=randn(2, 16, 2, 32),
             k_new=randn(2, 3, 2, 32), v_new=randn(2, 3, 2, 32), cache_lens=torch.tensor([3, 16]))
    a.update(kw)
    return a


DECODE_ERRORS = [
    (dict(q=randn(3, 8, 32)), ValueError, r"q must be 4-D \[B, S, Hq, D\]"),
    (dict(k_cache=randn(2, 16, 64)), ValueError, r"k_cache must be 4-D \[B, Tmax, Hkv, D\]"),
    (dict(v_cache=randn(2, 16, 2, 32, 1)), ValueError, r"v_cache must be 4-D"),
    (dict(q=randn(2, 3, 6, 32), k_cache=randn(2, 16, 4, 32), v_cache=randn(2, 16, 4, 32)),
     ValueError, r"Hq = 6 .* multiple of the KV heads Hkv = 4"),
    (dict(q=randn(2, 3, 8, 16)), ValueError, r"k_cache head_dim \(32\) must match q head_dim D = 16"),
    (dict(q=randn(1, 3, 8, 32)), ValueError, r"k_cache batch size \(2\) must match q"),
    (dict(v_cache=randn(2, 15, 2, 32)), ValueError, r"v_cache must have the shape of k_cache"),
    (dict(q=randn(2, 3, 8, 32, dtype=torch.bfloat16)), TypeError, r"q \(.*\) and k_cache \(.*\) must have the same dtype"),
    (dict(v_cache=randn(2, 16, 2, 32, dtype=torch.float64)), TypeError, r"v_cache .* and k_cache .* same dtype"),
    (dict(q=torch.ones(2, 3, 8, 32, dtype=torch.int32)), TypeError, "q must be float32, bfloat16"),
    (dict(cache_lens=torch.tensor([3, 2])), ValueError, r"cache_lens\[1\] = 2 must be in \[S, Tmax\] = \[3, 16\]"),
    (dict(cache_lens=torch.tensor([17, 3])), ValueError, r"cache_lens\[0\] = 17 must be in \[S, Tmax\] = \[3, 16\]"),
    (dict(cache_lens=torch.tensor([3, 4, 5])), ValueError, r"cache_lens must be 1-D \[B\] = \[2\]"),
    (dict(cache_lens=torch.tensor([[3, 4]])), ValueError, r"cache_lens must be 1-D \[B\] = \[2\]"),
    (dict(cache_lens=torch.tensor([3.0, 4.0])), TypeError, "cache_lens must be int32 or int64"),
    # rows outermost: neither layout (head-major is [B, Hkv, Tmax, D] storage, and valid)
    (dict(k_cache=randn(16, 2, 2, 32).transpose(0, 1)), ValueError, r"k_cache must be .* laid out contiguous or head-major"),
    (dict(k_cache=randn(2, 2, 16, 32).transpose(1, 2)), ValueError, r"v_cache must have the memory layout of k_cache"),
]

APPEND_ERRORS = [
    (dict(cache_lens=torch.tensor([13, 14])), ValueError,
     r"cache_lens\[1\] = 14 leaves no room for S = 3 .* Tmax = 16"),
    (dict(cache_lens=torch.tensor([-1, 0])), ValueError, r"cache_lens\[0\] = -1 leaves no room"),
    (dict(k_new=randn(2, 3, 64)), ValueError, r"k_new must be 4-D \[B, S, Hkv, D\]"),
    (dict(v_new=randn(2, 3, 2)), ValueError, r"v_new must be 4-D \[B, S, Hkv, D\]"),
    (dict(k_new=randn(2, 3, 1, 32), v_new=randn(2, 3, 1, 32)), ValueError, r"k_new must be \[B, S, Hkv, D\] with B = 2, Hkv = 2, D = 32"),
    (dict(k_new=randn(2, 3, 2, 31), v_new=randn(2, 3, 2, 31)), ValueError, r"k_new must be \[B, S, Hkv, D\]"),
    (dict(k_new=randn(3, 3, 2, 32), v_new=randn(3, 3, 2, 32)), ValueError, r"k_new must be \[B, S, Hkv, D\]"),
    (dict(v_new=randn(2, 4, 2, 32)), ValueError, r"v_new must have the shape of k_new"),
    (dict(v_new=randn(2, 3, 2, 32, dtype=torch.float16)), TypeError, r"v_new .* and v_cache .* same dtype"),
    (dict(k_cache=randn(2, 16, 2, 64)[..., :32]), ValueError, r"k_cache must be .* laid out contiguous or head-major"),
    (dict(v_cache=randn(2, 2, 16, 32).transpose(1, 2)), ValueError, r"v_cache must have the memory layout of k_cache"),
    (dict(v_cache=randn(2, 16, 2, 32, dtype=torch.float64)), TypeError, r"v_cache .* and k_cache .* same dtype"),
    (dict(cache_lens=torch.tensor([1], dtype=torch.int32)), ValueError, r"cache_lens must be 1-D \[B\] = \[2\]"),
    (dict(cache_lens=torch.tensor([1, 2], dtype=torch.int16)), TypeError, "cache_lens must be int32 or int64"),
]


@pytest.mark.parametrize("path", ["native", "fallback"])
@pytest.mark.parametrize("kw, exc, match", DECODE_ERRORS, ids=[e[2][:40] for e in DECODE_ERRORS])
def test_decode_bad_input_is_a_clear_error(path, kw, exc, match):
    a = _bad(**kw)
    fn = dec if path == "native" else _decode_attention_fallback
    with pytest.raises(exc, match=match):
        fn(a["q"], a["k_cache"], a["v_cache"], a["cache_lens"], None)


@pytest.mark.parametrize("path", ["native", "fallback"])
@pytest.mark.parametrize("kw, exc, match", APPEND_ERRORS, ids=[e[2][:40] for e in APPEND_ERRORS])
def test_append_bad_input_is_a_clear_error(path, kw, exc, match):
    a = _bad(**kw)
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    fn = app if path == "native" else _kv_cache_append_fallback
    with pytest.raises(exc, match=match):
        fn(a["k_cache"], a["v_cache"], a["k_new"], a["v_new"], a["cache_lens"])
    assert torch.equal(a["k_cache"], kc) and torch.equal(a["v_cache"], vc), "nothing written on error"


# -- decode_attention_step: a block's qk-norm + RoPE + append + attention in one call ------------
step = torch.ops.kr_mini_llm.decode_attention_step

# (B, S, Hq, Hkv, D, Tmax, lens before the step, qk_norm): MHA, GQA, MQA, odd head counts,
# one row and several, a long cache past the split length.
STEP_CASES = [
    (1, 1, 1, 1, 8, 4, [0], False),
    (2, 1, 12, 4, 64, 600, [543, 0], False),
    (3, 2, 6, 2, 16, 30, [0, 28, 9], True),
    (2, 5, 7, 1, 32, 40, [35, 3], True),
    (1, 3, 4, 4, 6, 9, [6], False),
    (2, 1, 9, 3, 128, 1100, [1099, 517], True),
]


def make_step(case, dtype, cache_dtype, seed=0, shared_tables=False):
    """shared_tables: cos/sin [S, D/2] for every sequence (positions from lens[0]) instead of [B, S, D/2]."""
    B, S, Hq, Hkv, D, Tmax, lens, qk_norm = case
    g = torch.Generator().manual_seed(seed)
    qkv = randn(B, S, (Hq + 2 * Hkv) * D, dtype=dtype, generator=g)
    norms = (torch.rand(D, generator=g, dtype=torch.float64).to(dtype) + 0.5,
             torch.rand(D, generator=g, dtype=torch.float64).to(dtype) + 0.5) if qk_norm else (None, None)
    cos, sin = ops.rope_tables(D, Tmax + 1, 10000.0, None)
    lens = torch.tensor(lens)
    pos = (lens.unsqueeze(1) + torch.arange(S)).clamp(max=Tmax)
    if shared_tables:
        pos = pos[0]
    kc = randn(B, Tmax, Hkv, D, dtype=cache_dtype, generator=g)
    vc = randn(B, Tmax, Hkv, D, dtype=cache_dtype, generator=g)
    return [qkv, *norms, 1e-6, cos[pos].to(dtype), sin[pos].to(dtype), kc, vc, lens, Hq]


def _as64(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("case", STEP_CASES, ids=[str(c[:5]) for c in STEP_CASES])
@pytest.mark.parametrize("dtype, cache_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                                (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("shared_tables", [False, True], ids=["per-sequence-tables", "shared-tables"])
def test_step_matches_float64_reference(case, dtype, cache_dtype, shared_tables):
    args = make_step(case, dtype, cache_dtype, shared_tables=shared_tables)
    ref_args = _as64(args)
    out = ops.decode_attention_step(*args)
    ref = ops.decode_attention_step_reference(*ref_args)
    B, S, Hq, _, D = case[:5]
    assert out.dtype == dtype and out.shape == (B, S, Hq * D)
    # bf16 caches/activations: the reference keeps them in float64, the kernel rounds them once more
    low = torch.bfloat16 if torch.bfloat16 in (dtype, cache_dtype) else dtype
    assert_close(out, ref, low, msg=str(case))
    lens = args[-2]
    for b, L in enumerate(lens.tolist()):  # the new rows were written, in the cache's dtype
        assert_close(args[6][b, L:L + S], ref_args[6][b, L:L + S], low)
        assert_close(args[7][b, L:L + S], ref_args[7][b, L:L + S], low)
    assert torch.equal(lens, torch.tensor(case[6])), "cache_lens is the caller's to advance"


@pytest.mark.parametrize("shared_tables", [False, True])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_step_is_the_separate_ops_bit_for_bit(cache_dtype, shared_tables):
    """What DecodeModel ran before, op by op: the fused call uses the same kernels."""
    qkv, qn, kn, eps, cos, sin, kc, vc, lens, Hq = make_step(STEP_CASES[3], torch.float32, cache_dtype,
                                                             shared_tables=shared_tables)
    k2, v2 = kc.clone(), vc.clone()
    out = ops.decode_attention_step(qkv, qn, kn, eps, cos, sin, kc, vc, lens, Hq)
    B, S, _ = qkv.shape
    Hkv, D = kc.shape[2], kc.shape[3]
    x = qkv.view(B, S, Hq + 2 * Hkv, D)
    q, k, v = x[:, :, :Hq], x[:, :, Hq:Hq + Hkv], x[:, :, Hq + Hkv:]
    q, k = ops.rms_norm(q, qn, eps), ops.rms_norm(k, kn, eps)
    q, k = ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)
    ops.kv_cache_append(k2, v2, k.to(cache_dtype), v.to(cache_dtype).contiguous(), lens)
    sep = ops.decode_attention(q.to(cache_dtype), k2, v2, lens + S).reshape(B, S, Hq * D).float()
    assert torch.equal(out, sep) and torch.equal(kc, k2) and torch.equal(vc, v2)


def test_step_opcheck_and_fallback():
    from kr_mini_llm.ops.decode_attention import _decode_attention_step_fallback

    for case in STEP_CASES[2:4]:
        args = make_step(case, torch.float32, torch.bfloat16)
        torch.library.opcheck(step.default, tuple(args))
        a64 = _as64(args)
        b64 = [x.clone() if isinstance(x, torch.Tensor) else x for x in a64]
        assert_close(_decode_attention_step_fallback(*a64), ops.decode_attention_step(*b64), torch.float64)
        assert_close(a64[6], b64[6], torch.float64)
        assert_close(a64[7], b64[7], torch.float64)


STEP_ERRORS = [
    (dict(qkv=randn(2, 3, 100)), ValueError, r"qkv's last dim must be \(num_heads \+ 2 Hkv\) \* D = \(8 \+ 2 \* 2\) \* 32 = 384"),
    (dict(qkv=randn(2, 384)), ValueError, r"qkv must be 3-D"),
    (dict(num_heads=6), ValueError, r"num_heads = 6 must be a positive multiple of the KV heads Hkv = 4"),
    (dict(qkv=randn(1, 3, 384)), ValueError, r"k_cache batch size \(2\) must match qkv"),
    (dict(k_norm=None), ValueError, r"q_norm and k_norm go together"),
    (dict(qkv=torch.ones(2, 3, 384, dtype=torch.int32)), TypeError, "qkv must be float32, bfloat16"),
    (dict(v_cache=randn(2, 16, 2, 32, dtype=torch.float64)), TypeError, r"v_cache .* and k_cache .* same dtype"),
]


@pytest.mark.parametrize("path", ["native", "fallback"])
@pytest.mark.parametrize("kw, exc, match", STEP_ERRORS, ids=[e[2][:40] for e in STEP_ERRORS])
def test_step_bad_input_is_a_clear_error(path, kw, exc, match):
    from kr_mini_llm.ops.decode_attention import _decode_attention_step_fallback

    a = dict(qkv=randn(2, 3, 384), q_norm=torch.ones(32), k_norm=torch.ones(32), cos=torch.ones(2, 3, 16),
             sin=torch.zeros(2, 3, 16), k_cache=randn(2, 16, 2, 32), v_cache=randn(2, 16, 2, 32),
             cache_lens=torch.tensor([3, 4]), num_heads=8)
    if "num_heads" in kw and kw["num_heads"] == 6:
        a["k_cache"], a["v_cache"] = randn(2, 16, 4, 32), randn(2, 16, 4, 32)
    a.update(kw)
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    fn = step if path == "native" else _decode_attention_step_fallback
    with pytest.raises(exc, match=match):
        fn(a["qkv"], a["q_norm"], a["k_norm"], 1e-6, a["cos"], a["sin"], a["k_cache"], a["v_cache"],
           a["cache_lens"], a["num_heads"])
    assert torch.equal(a["k_cache"], kc) and torch.equal(a["v_cache"], vc), "nothing written on error"


# -- cache layouts: contiguous and head-major ([B, Hkv, Tmax, D] storage, KVCache's) --------------
def head_major(c):
    """c's values in a head-major cache."""
    B, Tmax, Hkv, D = c.shape
    out = ops.new_cache(B, Tmax, Hkv, D, c.dtype, layout="head-major")
    assert out.shape == c.shape and out.stride() == (Hkv * Tmax * D, D, Tmax * D, 1)
    return out.copy_(c)


@pytest.mark.parametrize("path", ["native", "fallback"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) for c in CASES])
def test_head_major_caches_give_the_contiguous_bits(case, dtype, path):
    """Append then attend on both layouts: the same cache values and the same output bits (the
    layout moves the rows in memory, not the arithmetic)."""
    decode, append = (dec, app) if path == "native" else (_decode_attention_fallback, _kv_cache_append_fallback)
    B, S, Hq, Hkv, D, Tmax, lens = case
    q, kc, vc, cl = make(B, S, Hq, Hkv, D, Tmax, lens, dtype, seed=3)
    g = torch.Generator().manual_seed(4)
    kn, vn = randn(B, S, Hkv, D, dtype=dtype, generator=g), randn(B, S, Hkv, D, dtype=dtype, generator=g)
    before = cl - S  # rows already cached: the new ones land at before[b] ..
    hk, hv = head_major(kc), head_major(vc)
    append(kc, vc, kn, vn, before)
    append(hk, hv, kn, vn, before)
    assert torch.equal(hk, kc) and torch.equal(hv, vc)
    assert torch.equal(decode(q, hk, hv, cl, None), decode(q, kc, vc, cl, None))


@pytest.mark.parametrize("case", STEP_CASES, ids=[str(c[:5]) for c in STEP_CASES])
def test_step_on_head_major_caches(case):
    args = make_step(case, torch.float32, torch.bfloat16, seed=5)
    hm = list(args)
    hm[6], hm[7] = head_major(args[6]), head_major(args[7])
    out = ops.decode_attention_step(*args)
    assert torch.equal(ops.decode_attention_step(*hm), out)
    assert torch.equal(hm[6], args[6]) and torch.equal(hm[7], args[7])


def test_opcheck_on_head_major_caches():
    q, kc, vc, cl = make(2, 3, 8, 2, 64, 45, [3, 40], torch.bfloat16)
    hk, hv = head_major(kc), head_major(vc)
    torch.library.opcheck(dec.default, (q, hk, hv, cl, None))
    kn = randn(2, 3, 2, 64, dtype=torch.bfloat16)
    torch.library.opcheck(app.default, (hk, hv, kn, kn.clone(), cl - 3))
    args = make_step(STEP_CASES[2], torch.float32, torch.bfloat16)
    args[6], args[7] = head_major(args[6]), head_major(args[7])
    torch.library.opcheck(step.default, tuple(args))


def test_a_batch_slice_of_a_head_major_cache_writes_through():
    """KVCache.rows(..) hands a server a slice of the batch: its appends land in the whole cache."""
    q, kc, vc, cl = make(3, 2, 4, 2, 32, 20, [5, 9, 2], seed=6)
    hk, hv = head_major(kc), head_major(vc)
    kn = randn(2, 2, 2, 32, generator=torch.Generator().manual_seed(7))
    ops.kv_cache_append(kc[1:], vc[1:], kn, kn, cl[1:])
    ops.kv_cache_append(hk[1:], hv[1:], kn, kn, cl[1:])
    assert torch.equal(hk, kc) and torch.equal(hv, vc)
    assert torch.equal(dec(q[1:], hk[1:], hv[1:], cl[1:] + 2, None), dec(q[1:], kc[1:], vc[1:], cl[1:] + 2, None))


def test_new_cache_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match=r"layout must be one of \['contiguous', 'head-major'\], got 'rows'"):
        ops.new_cache(1, 4, 2, 8, layout="rows")


@pytest.mark.parametrize("path", ["native", "fallback"])
@pytest.mark.parametrize("layout", ["contiguous", "head-major"])
def test_append_of_rows_that_are_cache_memory(layout, path):
    """k_new/v_new viewing the very rows they go to (rows 2..4 appended at row 3): copied out first,
    so the new rows are the old rows 2..4, not row 2 smeared forward."""
    append = app if path == "native" else _kv_cache_append_fallback
    g = torch.Generator().manual_seed(8)
    kc = ops.new_cache(2, 9, 3, 8, layout=layout).copy_(randn(2, 9, 3, 8, generator=g))
    vc = ops.new_cache(2, 9, 3, 8, layout=layout).copy_(randn(2, 9, 3, 8, generator=g))
    want_k, want_v = kc[:, 2:5].clone(), vc[:, 2:5].clone()
    append(kc, vc, kc[:, 2:5], vc[:, 2:5], torch.tensor([3, 3]))
    assert torch.equal(kc[:, 3:6], want_k) and torch.equal(vc[:, 3:6], want_v)


@pytest.mark.parametrize("layout", ["contiguous", "head-major"])
def test_empty_caches_pass_the_layout_check(layout):
    """An empty cache has no layout to get wrong (its strides are whatever torch gave it)."""
    kc, vc = ops.new_cache(2, 0, 2, 4, layout=layout), ops.new_cache(2, 0, 2, 4, layout=layout)
    for fn in (app, _kv_cache_append_fallback):
        fn(kc, vc, randn(2, 0, 2, 4), randn(2, 0, 2, 4), torch.tensor([0, 0]))


@pytest.mark.parametrize("path", ["native", "fallback"])
def test_one_kv_head_caches_in_either_layout_go_together(path):
    """With Hkv = 1 the two layouts are the same memory, whatever the size-1 dim's stride says."""
    decode = dec if path == "native" else _decode_attention_fallback
    q, kc, vc, cl = make(2, 2, 4, 1, 32, 11, [5, 11], seed=9)
    hk = head_major(kc)
    assert hk.stride() != vc.stride()
    assert torch.equal(decode(q, hk, vc, cl, None), decode(q, kc, vc, cl, None))
