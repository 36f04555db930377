"""decode_block: one block of a decode step in one call, against its seven parts called one by one
(the same kernels, so the same bits) and against the float64 reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.decode_block import _decode_block_fallback
from kr_mini_llm.ops.decode_linear import x_format

from .utils import assert_close, native_thread_invariance, num_threads, randn

block = torch.ops.kr_mini_llm.decode_block


def pack(w, wdtype):
    """(weight, scales) of a float weight in the decode formats."""
    if wdtype == "int8":
        return ops.quantize_int8(w, None)
    if wdtype == "int4":
        return ops.quantize_int4(w, 32)
    return w.to(torch.float32 if wdtype == "fp32" else torch.bfloat16), None


def make(case, wdtype, cache_dtype, x_dtype=torch.float32, seed=0):
    """decode_block's arguments as a dict, in the op's order."""
    B, S, Hq, Hkv, D, C, I, Tmax, lens, qk_norm = case
    g = torch.Generator().manual_seed(seed)

    def weight(out, inp):
        return pack(randn(out, inp, generator=g) * inp**-0.5, wdtype)

    def norm(n):
        return torch.rand(n, generator=g, dtype=torch.float64).float() + 0.5

    lens = torch.tensor(lens)
    cos, sin = ops.rope_tables(D, Tmax + 1, 10000.0, None)
    pos = lens.unsqueeze(1) + torch.arange(S)
    qkv_w, qkv_s = weight((Hq + 2 * Hkv) * D, C)
    o_w, o_s = weight(C, Hq * D)
    gu_w, gu_s = weight(2 * I, C)
    down_w, down_s = weight(C, I)
    return dict(x=randn(B, S, C, generator=g).to(x_dtype), norm1=norm(C), qkv_weight=qkv_w, qkv_scales=qkv_s,
                q_norm=norm(D) if qk_norm else None, k_norm=norm(D) if qk_norm else None, cos=cos[pos], sin=sin[pos],
                k_cache=randn(B, Tmax, Hkv, D, generator=g).to(cache_dtype),
                v_cache=randn(B, Tmax, Hkv, D, generator=g).to(cache_dtype), cache_lens=lens, num_heads=Hq,
                o_weight=o_w, o_scales=o_s, norm2=norm(C), gate_up_weight=gu_w, gate_up_scales=gu_s,
                down_weight=down_w, down_scales=down_s, eps=1e-6)


def by_parts(a):
    """The seven ops one by one (what DecodeModel called before decode_block), on a's own caches."""
    eps = a["eps"]
    qkv = ops.decode_linear(ops.rms_norm(a["x"], a["norm1"], eps), a["qkv_weight"], a["qkv_scales"])
    att = ops.decode_attention_step(qkv, a["q_norm"], a["k_norm"], eps, a["cos"], a["sin"], a["k_cache"],
                                    a["v_cache"], a["cache_lens"], a["num_heads"])
    x = ops.decode_linear(att, a["o_weight"], a["o_scales"], residual=a["x"])
    h = ops.decode_linear_swiglu(ops.rms_norm(x, a["norm2"], eps), a["gate_up_weight"], a["gate_up_scales"])
    return ops.decode_linear(h, a["down_weight"], a["down_scales"], residual=x)


def clone(a):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.items()}


# (B, S, Hq, Hkv, D, C, I, Tmax, lens before the step, qk_norm): GQA, MHA, MQA, a decode row and
# several, a cache past the attention's split length (512), sizes int4 takes (multiples of 32) and
# odd ones (int4 skipped).
CASES = [
    (1, 1, 4, 2, 16, 64, 96, 20, [7], False),
    (2, 1, 6, 2, 32, 64, 160, 600, [543, 0], True),
    (3, 2, 3, 1, 32, 32, 64, 12, [0, 5, 10], True),
    (1, 4, 2, 2, 6, 10, 14, 9, [3], False),
    (2, 1, 1, 1, 8, 7, 5, 3, [2, 0], True),
]
WDTYPES = ["fp32", "bf16", "int8", "int4"]


def int4_fits(case):
    B, S, Hq, Hkv, D, C, I = case[:7]
    return C % 32 == 0 and I % 32 == 0 and (Hq * D) % 32 == 0


# int4 where every projection's in_features is a multiple of 32
WEIGHT_CASES = [(c, w) for c in CASES for w in WDTYPES if w != "int4" or int4_fits(c)]


@pytest.mark.parametrize("case, wdtype", WEIGHT_CASES, ids=[f"{c[:7]}-{w}" for c, w in WEIGHT_CASES])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_is_its_parts_bit_for_bit(case, wdtype, cache_dtype):
    a = make(case, wdtype, cache_dtype)
    p = clone(a)
    out = ops.decode_block(**a)
    assert out.shape == a["x"].shape and out.dtype == a["x"].dtype
    assert torch.equal(out, by_parts(p))
    assert torch.equal(a["k_cache"], p["k_cache"]) and torch.equal(a["v_cache"], p["v_cache"])
    assert torch.equal(a["cache_lens"], torch.tensor(case[8])), "cache_lens is the caller's to advance"


@pytest.mark.parametrize("case", CASES, ids=[str(c[:7]) for c in CASES])
@pytest.mark.parametrize("path", ["native", "fallback"])
def test_head_major_caches_give_the_contiguous_bits(case, path):
    """KVCache's layout against contiguous caches: the same output, the same cache rows written."""
    run = ops.decode_block if path == "native" else (lambda **a: _decode_block_fallback(*a.values()))
    a = make(case, "int8", torch.bfloat16)
    h = clone(a)
    for name in ("k_cache", "v_cache"):
        h[name] = ops.new_cache(*a[name].shape, a[name].dtype, layout="head-major").copy_(a[name])
    assert h["k_cache"].stride()[1] == case[4], "one head's rows side by side"
    assert torch.equal(run(**h), run(**a))
    assert torch.equal(h["k_cache"], a["k_cache"]) and torch.equal(h["v_cache"], a["v_cache"])


@pytest.mark.parametrize("case", CASES, ids=[str(c[:7]) for c in CASES])
@pytest.mark.parametrize("wdtype, cache_dtype", [("fp32", torch.float32), ("fp32", torch.bfloat16),
                                                 ("bf16", torch.float32)])
def test_matches_float64_reference(case, wdtype, cache_dtype):
    a = make(case, wdtype, cache_dtype)
    ref_args = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in a.items()}
    out = ops.decode_block(**a)
    ref = ops.decode_block_reference(**ref_args)
    # bf16 caches or weights (x rounded to bf16 to meet them on AVX512-BF16 CPUs): bf16's tolerance
    low = torch.float32 if (wdtype, cache_dtype) == ("fp32", torch.float32) else torch.bfloat16
    assert_close(out, ref, low, scale=4, msg=str(case))
    S, lens = case[1], case[8]
    for b, L in enumerate(lens):  # the new rows, in the cache's dtype
        assert_close(a["k_cache"][b, L:L + S], ref_args["k_cache"][b, L:L + S], low, scale=4)
        assert_close(a["v_cache"][b, L:L + S], ref_args["v_cache"][b, L:L + S], low, scale=4)


@st.composite
def block_cases(draw):
    Hkv, G = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    B, S, Tmax = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(4, 40))
    S = min(S, Tmax)
    lens = [draw(st.integers(0, Tmax - S)) for _ in range(B)]
    wdtype = draw(st.sampled_from(WDTYPES))
    Hq = Hkv * G
    if wdtype == "int4":  # in_features of every projection a multiple of 32
        D, C, I = 32, 32 * draw(st.integers(1, 3)), 32 * draw(st.integers(1, 3))
    else:
        D, C, I = 2 * draw(st.integers(1, 12)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    case = (B, S, Hq, Hkv, D, C, I, Tmax, lens, draw(st.booleans()))
    return case, wdtype, draw(st.sampled_from([torch.float32, torch.bfloat16])), \
        draw(st.sampled_from([torch.float32, torch.bfloat16])), draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(block_cases())
def test_generated_shapes_are_their_parts(drawn):
    case, wdtype, cache_dtype, x_dtype, seed = drawn
    a = make(case, wdtype, cache_dtype, x_dtype, seed)
    p = clone(a)
    with torch.inference_mode():
        out = ops.decode_block(**a)
        assert torch.equal(out, by_parts(p)), str(drawn)
    assert torch.equal(a["k_cache"], p["k_cache"]) and torch.equal(a["v_cache"], p["v_cache"])


def test_opcheck():
    for case in CASES[1:3]:
        torch.library.opcheck(block.default, tuple(make(case, "fp32", torch.bfloat16).values()))


@pytest.mark.native_kernels(reason="compares the native kernel with the device fallback")
@pytest.mark.parametrize("wdtype", WDTYPES)
def test_the_device_fallback_computes_the_same_block(wdtype):
    """The fallback of other devices (each part by its own fallback: dequantised weights, SDPA) against
    the native kernel: the same block within the kernels' roundings, the same cache rows."""
    a = make(CASES[2], wdtype, torch.float32)
    native, fallback = clone(a), clone(a)
    out = ops.decode_block(**native)
    with ops.device_fallbacks():
        assert ops.backend_report("cpu")["decode_block"] == "parts"
        ref = ops.decode_block(**fallback)
    # The native kernel meets int8 / int4 weights with x quantised to int8 per block, and bf16 weights
    # with x rounded to bf16 where the CPU has bf16 dot products (x_format): bf16-sized errors.
    wdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8, "int4": torch.uint8}[wdtype]
    tol = torch.float32 if x_format(wdt, 64)[0] == "fp32" else torch.bfloat16
    assert_close(out, ref.double(), tol, scale=4)
    for name in ("k_cache", "v_cache"):
        assert_close(native[name], fallback[name].double(), tol, scale=4)


@pytest.mark.parametrize("name", ["x", "o_weight", "q_norm", "cos", "down_weight"])
def test_no_gradient(name):
    a = make(CASES[1], "fp32", torch.float32)
    a[name].requires_grad_(True)
    with pytest.raises(RuntimeError, match="decode_block is an inference-only op"):
        ops.decode_block(**a)


# Spoiled arguments of CASES[1] (C = 64, Hq * D = 192, I = 160): each a clear error before the caches
# are written, native and fallback alike.
ERRORS = [
    (dict(o_weight=torch.zeros(64, 100)), ValueError, r"decode_block: o_weight must have in_features = 192"),
    (dict(o_weight=torch.zeros(63, 192)), ValueError, r"decode_block: o_weight must have out_features = C = 64"),
    (dict(gate_up_weight=torch.zeros(321, 64)), ValueError, r"gate_up_weight must stack gate and up rows"),
    (dict(down_weight=torch.zeros(64, 161)), ValueError, r"down_weight must have in_features = 160"),
    (dict(down_weight=torch.zeros(65, 160)), ValueError, r"down_weight must have out_features = C = 64"),
    (dict(norm2=torch.ones(65)), ValueError, r"norm2 must be \[C\] = \[64\]"),
    (dict(down_weight=torch.zeros(64, 160, dtype=torch.int8)), ValueError, r"int8 down_weight needs down_scales"),
    (dict(o_scales=torch.ones(64, 1)), ValueError, r"o_scales are only for int8 and int4 weights"),
    (dict(x=torch.zeros(2, 1, 64, dtype=torch.float64)), TypeError, r"x must be float32 or bfloat16"),
    (dict(x=torch.zeros(2, 64)), ValueError, r"x must be 3-D \[B, S, C\]"),
    (dict(num_heads=2**62), ValueError, r"num_heads = 4611686018427387904 must be positive, with num_heads \* D"),
    (dict(num_heads=0), ValueError, r"num_heads = 0 must be positive"),
    (dict(eps=-1.0), ValueError, r"eps must be >= 0"),
    (dict(cache_lens=torch.tensor([600, 0])), ValueError, r"cache_lens\[0\] = 600 leaves no room for S = 1"),
    (dict(cos=torch.ones(2, 1, 3), sin=torch.zeros(2, 1, 3)), ValueError, r"cos/sin must be"),
]


@pytest.mark.parametrize("path", ["native", "fallback"])
@pytest.mark.parametrize("kw, exc, match", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_bad_input_is_a_clear_error_that_writes_nothing(path, kw, exc, match):
    a = make(CASES[1], "fp32", torch.bfloat16)
    a.update(kw)
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    fn = block if path == "native" else _decode_block_fallback
    with pytest.raises(exc, match=match):
        fn(*a.values())
    assert torch.equal(a["k_cache"], kc) and torch.equal(a["v_cache"], vc), "nothing written on error"


@native_thread_invariance
def test_thread_count_does_not_change_the_bits():
    a = make(CASES[1], "int8", torch.bfloat16)
    outs = []
    for n in (1, 2):
        with num_threads(n):
            outs.append(ops.decode_block(**clone(a)))
    assert torch.equal(*outs)
