"""decode_stack: every block of a decode step in one call, against decode_block layer by layer (the
same kernels, so the same bits and the same cache rows), its float64 reference, and bad input caught
in any layer before the first cache is written."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.decode_block import ARGS, LAYER_ARGS

from .test_decode_block import CASES, WDTYPES, clone, int4_fits, make
from .utils import assert_close

stack = torch.ops.kr_mini_llm.decode_stack


def make_stack(case, wdtype, cache_dtype, layers, x_dtype=torch.float32, seed=0):
    """decode_stack's arguments: layer i's weights and caches from make(case, seed + i), x and the
    shared arguments from layer 0's."""
    per = [make(case, wdtype, cache_dtype, x_dtype, seed + i) for i in range(layers)]
    return {n: [p[n] for p in per] if n in LAYER_ARGS else per[0][n] for n in ARGS}


def clone_stack(a):
    return {k: [t.clone() if isinstance(t, torch.Tensor) else t for t in v] if isinstance(v, list)
            else v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.items()}


def layer(a, i):
    return {n: a[n][i] if n in LAYER_ARGS else a[n] for n in ARGS}


def by_blocks(a):
    """decode_block layer by layer on a's own caches (what DecodeModel called before decode_stack)."""
    x = a["x"]
    for i in range(len(a["norm1"])):
        x = ops.decode_block(**{**layer(a, i), "x": x})
    return x


def cases():
    for c in CASES:
        for w in WDTYPES:
            if w != "int4" or int4_fits(c):
                yield c, w


@pytest.mark.parametrize("case,wdtype", list(cases()))
def test_the_same_bits_as_decode_block_layer_by_layer(case, wdtype):
    cache_dtype = torch.float32 if wdtype == "fp32" else torch.bfloat16
    a = make_stack(case, wdtype, cache_dtype, layers=3)
    mine, theirs = clone_stack(a), clone_stack(a)
    out = ops.decode_stack(**mine)
    assert out.shape == a["x"].shape and out.dtype == a["x"].dtype
    assert torch.equal(out, by_blocks(theirs))
    for name in ("k_cache", "v_cache"):
        for m, t in zip(mine[name], theirs[name]):
            assert torch.equal(m, t)
    assert torch.equal(mine["cache_lens"], a["cache_lens"])  # left to the caller, as decode_block does


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_matches_the_float64_reference(x_dtype):
    a = make_stack(CASES[2], "fp32", torch.float32, layers=2, x_dtype=x_dtype)
    mine, ref = clone_stack(a), clone_stack(a)
    out = ops.decode_stack(**mine)
    for n in ("x", "cos", "sin"):
        ref[n] = ref[n].double()
    for n in LAYER_ARGS:
        ref[n] = [t.double() if t is not None and t.is_floating_point() else t for t in ref[n]]
    expected = ops.decode_stack_reference(*(ref[n] for n in ARGS))
    assert_close(out, expected, x_dtype, scale=4)
    for m, r in zip(mine["k_cache"] + mine["v_cache"], ref["k_cache"] + ref["v_cache"]):
        assert_close(m, r, x_dtype, scale=4)  # layer 1's rows come from layer 0's output, in x's dtype


def test_one_layer_is_decode_block():
    a = make_stack(CASES[0], "int8", torch.bfloat16, layers=1)
    mine, theirs = clone_stack(a), clone(layer(a, 0))
    assert torch.equal(ops.decode_stack(**mine), ops.decode_block(**theirs))


def test_opcheck():
    a = make_stack(CASES[0], "int4", torch.bfloat16, layers=2)
    torch.library.opcheck(stack.default, tuple(a[n] for n in ARGS))


def test_no_gradient():
    a = make_stack(CASES[1], "fp32", torch.float32, layers=2)
    a["o_weight"][1].requires_grad_(True)
    with pytest.raises(RuntimeError, match="decode_stack is an inference-only op"):
        ops.decode_stack(**a)


def _spoil(a, i, how):
    """Argument `how` of layer i spoiled; the message each gives."""
    if how == "short list":
        a["o_scales"] = a["o_scales"][:-1]
        return ValueError, r"every list holds one entry per layer: norm1 has \d+, o_scales has"
    if how == "qkv rows":
        a["qkv_weight"][i] = a["qkv_weight"][i][:-1]
        if a["qkv_scales"][i] is not None:
            a["qkv_scales"][i] = a["qkv_scales"][i][:-1]
        return ValueError, rf"layer {i}'s qkv_weight must have \(num_heads \+ 2 Hkv\) \* D"
    if how == "cache shape":
        a["v_cache"][i] = a["v_cache"][i][:, :-1].contiguous()
        return ValueError, r"caches must be like layer 0's|v_cache must have the shape of k_cache"
    if how == "q_norm alone":
        a["k_norm"][i] = None
        a["q_norm"][i] = torch.ones(a["k_cache"][0].shape[3])
        return ValueError, r"q_norm and k_norm go together"
    if how == "norm2 size":
        a["norm2"][i] = torch.ones(a["norm2"][i].shape[0] + 1)
        return ValueError, rf"decode_stack: layer {i}: .*norm2 must be \[C\]"
    if how == "int4 scales dtype":
        a["down_scales"][i] = a["down_scales"][i].float()
        return TypeError, rf"decode_stack: layer {i}: .*scales of int4 weights must be float16"
    if how == "shared cache":  # a list built as [cache] * n: layer i + 1 would write over layer i
        a["v_cache"][i] = a["k_cache"][i]
        return ValueError, r"share memory: every layer needs caches of its own"
    raise AssertionError(how)


SPOILERS = ["short list", "qkv rows", "cache shape", "q_norm alone", "norm2 size", "int4 scales dtype", "shared cache"]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(layers=st.integers(1, 4), spoil=st.sampled_from(SPOILERS + [None]), at=st.integers(0, 3),
       qk_norm=st.booleans(), seed=st.integers(0, 2**16))
def test_generated_stacks_run_or_refuse_before_writing(layers, spoil, at, qk_norm, seed):
    """Stacks of 1-4 layers, each argument of any layer possibly spoiled: a clean run equal to
    decode_block layer by layer, or a clear error that wrote no cache of any layer."""
    case = (1, 1, 4, 2, 16, 64, 96, 20, [7], qk_norm)
    a = make_stack(case, "int4", torch.bfloat16, layers, seed=seed)
    i = at % layers
    if spoil is None:
        theirs = clone_stack(a)
        assert torch.equal(ops.decode_stack(**a), by_blocks(theirs))
        return
    err, match = _spoil(a, i, spoil)
    before = clone_stack(a)
    with pytest.raises(err, match=match):
        ops.decode_stack(**a)
    for name in ("k_cache", "v_cache"):
        for now, then in zip(a[name], before[name]):
            assert torch.equal(now, then), "a cache was written before the error"


def test_views_of_one_cache_tensor_are_caches_apart():
    """Per-layer caches cut from one tensor (not overlapping) are as good as separate ones."""
    a = make_stack(CASES[0], "fp32", torch.float32, layers=2)
    theirs = clone_stack(a)
    k_all, v_all = torch.stack(a["k_cache"]), torch.stack(a["v_cache"])
    a["k_cache"], a["v_cache"] = list(k_all.unbind(0)), list(v_all.unbind(0))
    assert torch.equal(ops.decode_stack(**a), by_blocks(theirs))
    assert torch.equal(k_all, torch.stack(theirs["k_cache"]))


def test_empty_stack_is_refused():
    a = make_stack(CASES[0], "fp32", torch.float32, layers=1)
    for n in LAYER_ARGS:
        a[n] = []
    with pytest.raises(ValueError, match="needs at least one layer"):
        ops.decode_stack(**a)
