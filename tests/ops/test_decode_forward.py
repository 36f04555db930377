"""decode_forward: a model's decode step from token ids to logits in one call, against its parts run
one by one (the embedding rows, the rope tables at the cache positions, decode_stack, rms_norm and
the head: the same kernels, so the same bits, the same cache rows and cache_lens advanced by S), its
float64 reference, the device fallback, and bad input caught before anything is written."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.decode_block import ARGS as STACK_ARGS
from kr_mini_llm.ops.decode_forward import ARGS, _decode_forward_fallback
from kr_mini_llm.ops.decode_linear import embedding_rows

from .test_decode_block import CASES, int4_fits, pack
from .test_decode_stack import clone_stack, make_stack
from .utils import assert_close

VOCAB = 37


def make(case, wdtype, cache_dtype, layers=2, last_only=True, seed=0, tied=True):
    """decode_forward's arguments: make_stack's layers and caches, a vocabulary of VOCAB rows, rope tables
    of Tmax + 1 positions, ids drawn from the vocabulary."""
    a = make_stack(case, wdtype, cache_dtype, layers, seed=seed)
    B, S, Hq, Hkv, D, C = case[:6]
    Tmax = case[7]
    g = torch.Generator().manual_seed(seed + 100)
    embed_w, embed_s = pack(torch.randn(VOCAB, C, generator=g), wdtype)
    head_w, head_s = (embed_w, embed_s) if tied else pack(torch.randn(VOCAB, C, generator=g) * C**-0.5, wdtype)
    cos, sin = ops.rope_tables(D, Tmax + 1, 10000.0, None)
    out = {n: a[n] for n in STACK_ARGS if n not in ("x", "cos", "sin")}
    out.update(ids=torch.randint(0, VOCAB, (B, S), generator=g), embed_weight=embed_w, embed_scales=embed_s,
               rope_cos=cos, rope_sin=sin, norm=torch.rand(C, generator=g) + 0.5, head_weight=head_w,
               head_scales=head_s, last_only=last_only)
    return {n: out[n] for n in ARGS}


def by_parts(a):
    """The step as DecodeModel ran it before decode_forward, op by op, on a's own caches and lens."""
    S = a["ids"].shape[1]
    pos = a["cache_lens"].unsqueeze(1) + torch.arange(S)
    x = embedding_rows(a["ids"], a["embed_weight"], a["embed_scales"])
    stack = {n: a[n] for n in STACK_ARGS if n not in ("x", "cos", "sin")}
    x = ops.decode_stack(x=x, cos=a["rope_cos"][pos], sin=a["rope_sin"][pos], **stack)
    a["cache_lens"] += S
    if a["last_only"]:
        x = x[:, -1:]
    return ops.decode_linear(ops.rms_norm(x, a["norm"], a["eps"]), a["head_weight"], a["head_scales"])


def cases():
    for c in CASES:
        for w in ["fp32", "bf16", "int8", "int4"]:
            if w != "int4" or int4_fits(c):
                yield c, w


def assert_same_state(a, b):
    for name in ("k_cache", "v_cache"):
        for x, y in zip(a[name], b[name]):
            assert torch.equal(x, y)
    assert torch.equal(a["cache_lens"], b["cache_lens"])


@pytest.mark.parametrize("case,wdtype", list(cases()), ids=[f"{c[:7]}-{w}" for c, w in cases()])
@pytest.mark.parametrize("last_only", [True, False])
def test_the_bits_of_its_parts(case, wdtype, last_only):
    cache_dtype = torch.float32 if wdtype == "fp32" else torch.bfloat16
    a = make(case, wdtype, cache_dtype, last_only=last_only, tied=wdtype != "bf16")
    mine, theirs = clone_stack(a), clone_stack(a)
    logits = ops.decode_forward(**mine)
    B, S = a["ids"].shape
    assert logits.dtype == torch.float32 and logits.shape == (B, 1 if last_only else S, VOCAB)
    assert torch.equal(logits, by_parts(theirs))
    assert_same_state(mine, theirs)
    assert torch.equal(mine["cache_lens"], a["cache_lens"] + S)


def test_int32_ids_and_lens_and_a_second_step():
    a = make(CASES[1], "int8", torch.bfloat16)
    a["ids"], a["cache_lens"] = a["ids"].int(), a["cache_lens"].int()
    mine, theirs = clone_stack(a), clone_stack(a)
    for _ in range(2):  # the second step reads the rows the first one wrote
        assert torch.equal(ops.decode_forward(**mine), by_parts(theirs))
        assert_same_state(mine, theirs)
    assert mine["cache_lens"].dtype == torch.int32


@pytest.mark.parametrize("wdtype,group", [("int8", 32), ("int8", 16), ("int4", 64), ("int4", 32)])
def test_embedding_rows_of_grouped_scales(wdtype, group):
    """The embedding (and head) with several scales a row: the kernel's rows are embedding_rows'."""
    a = make(CASES[1], "int8", torch.bfloat16, last_only=False)
    C = a["norm"].shape[0]
    w = torch.randn(VOCAB, C, generator=torch.Generator().manual_seed(5))
    packed = ops.quantize_int8(w, group) if wdtype == "int8" else ops.quantize_int4(w, group)
    assert packed[1].shape == (VOCAB, C // group)
    a["embed_weight"], a["embed_scales"] = packed
    a["head_weight"], a["head_scales"] = packed
    a["ids"] = torch.tensor([[0], [VOCAB - 1]])
    mine, theirs = clone_stack(a), clone_stack(a)
    assert torch.equal(ops.decode_forward(**mine), by_parts(theirs))
    assert_same_state(mine, theirs)


def test_matches_the_float64_reference():
    a = make(CASES[2], "fp32", torch.float32, last_only=False)
    mine, ref = clone_stack(a), clone_stack(a)
    out = ops.decode_forward(**mine)
    for n in ("embed_weight", "head_weight", "norm", "rope_cos", "rope_sin"):
        ref[n] = ref[n].double()
    for n in ("norm1", "qkv_weight", "q_norm", "k_norm", "k_cache", "v_cache", "o_weight", "norm2",
              "gate_up_weight", "down_weight"):
        ref[n] = [t.double() if t is not None else t for t in ref[n]]
    expected = ops.decode_forward_reference(*(ref[n] for n in ARGS))
    assert_close(out, expected.float(), torch.float32, scale=8)
    assert torch.equal(mine["cache_lens"], ref["cache_lens"])


@pytest.mark.parametrize("wdtype", ["fp32", "int8", "int4"])
def test_fallback_is_the_same_step(wdtype):
    a = make(CASES[1], wdtype, torch.float32 if wdtype == "fp32" else torch.bfloat16, last_only=False)
    mine, theirs = clone_stack(a), clone_stack(a)
    assert torch.equal(_decode_forward_fallback(*(theirs[n] for n in ARGS)), ops.decode_forward(**mine))
    assert_same_state(mine, theirs)


def test_opcheck():
    a = make(CASES[0], "int8", torch.bfloat16)
    torch.library.opcheck(torch.ops.kr_mini_llm.decode_forward.default, tuple(a[n] for n in ARGS),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def spoil(a, what):
    """a with one argument made wrong (what, the words its error must contain)."""
    C = a["norm"].shape[0]
    if what == "id":
        a["ids"][0, 0] = VOCAB
        return ValueError, r"ids\[0, 0\] = 37 is not a token of the vocabulary"
    if what == "negative id":
        a["ids"][-1, -1] = -1
        return ValueError, "is not a token of the vocabulary: ids must be in"
    if what == "float ids":
        a["ids"] = a["ids"].float()
        return TypeError, "ids must be int64 or int32"
    if what == "position":
        a["cache_lens"][-1] = a["rope_cos"].shape[0] - a["ids"].shape[1] + 1
        return ValueError, "exceeds the .* positions of the rope tables"
    if what == "norm":
        a["norm"] = a["norm"][:-1]
        return ValueError, rf"norm must be \[C\] = \[{C}\]"
    if what == "head":
        a["head_weight"], a["head_scales"] = torch.zeros(VOCAB, C + 1), None
        return ValueError, "head_weight must have in_features"
    if what == "table":
        a["rope_sin"] = a["rope_sin"][:, :-1]
        return ValueError, "rope_sin must be"
    if what == "batch":
        a["ids"] = a["ids"][:, :1].repeat(2, 1) if a["ids"].shape[0] == 1 else a["ids"][:1]
        return ValueError, "the caches hold"
    if what == "scales":
        a["embed_scales"] = a["embed_scales"][:-1]
        return ValueError, "embed_scales must be"
    if what == "float64 table":
        a["rope_cos"] = a["rope_cos"].double()
        return TypeError, "rope_cos must be float32"
    if what == "float lens":
        a["cache_lens"] = a["cache_lens"].float()
        return TypeError, "cache_lens must be int32 or int64"
    if what == "expanded lens":
        a["cache_lens"] = a["cache_lens"][:1].expand(a["ids"].shape[0])
        return ValueError, "expanded tensor"
    if what == "inference lens":
        with torch.inference_mode():
            a["cache_lens"] = a["cache_lens"].clone()
        return ValueError, "inference tensor"
    if what == "layer":  # caught by decode_stack's checks, before the first block writes
        a["norm2"][-1] = a["norm2"][-1][:-1]
        return ValueError, "layer 1"
    raise AssertionError(what)


SPOILS = ["id", "negative id", "float ids", "position", "norm", "head", "table", "batch", "layer", "scales",
          "float64 table", "float lens", "expanded lens", "inference lens"]


@pytest.mark.parametrize("what", SPOILS)
@pytest.mark.parametrize("path", ["native", "fallback"])
def test_bad_input_is_named_and_writes_nothing(what, path):
    a = make(CASES[1], "int8", torch.bfloat16)
    kind, words = spoil(a, what)
    before = clone_stack(a)
    fn = ops.decode_forward if path == "native" else (lambda **k: _decode_forward_fallback(*(k[n] for n in ARGS)))
    with pytest.raises(kind, match=words):
        fn(**a)
    assert_same_state(a, before)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=st.sampled_from(CASES), lens=st.lists(st.integers(-3, 25), min_size=3, max_size=3),
       ids=st.lists(st.integers(-2, VOCAB + 1), min_size=8, max_size=8), last_only=st.booleans())
def test_generated_positions_and_ids(case, lens, ids, last_only):
    """Any cache lengths (past the cache, past the tables, negative) and ids (outside the vocabulary): a
    clean error that wrote nothing, or the step of the parts."""
    a = make(case, "int8", torch.bfloat16, layers=1, last_only=last_only)
    B, S = a["ids"].shape
    a["cache_lens"] = torch.tensor(lens[:B])
    a["ids"] = torch.tensor(ids[:B * S]).view(B, S)
    before = clone_stack(a)
    try:
        out = ops.decode_forward(**a)
    except ValueError:
        assert_same_state(a, before)
        valid_ids = bool(((before["ids"] >= 0) & (before["ids"] < VOCAB)).all())
        fits = all(0 <= n <= case[7] - S for n in lens[:B])
        assert not (valid_ids and fits), "a valid step was refused"
        return
    assert torch.equal(out, by_parts(before))
    assert_same_state(a, before)
