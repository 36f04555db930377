"""Generated hostile arguments for every public op (run by test_fuzz_ops.py in a child process).

Each op builds a consistent call from drawn sizes, then one drawn mutation spoils it: a wrong
dtype, rank or size, a non-contiguous or expanded view, the meta device (all tensors or one),
NaN/inf values, a zero-size dim, an empty tensor with a huge dim, or an int argument (cache
length, target, ignore_index, chunk_size, num_heads, eps, ...) at an int64 extreme. The op must
then raise a clean Python error (RuntimeError, ValueError, TypeError, IndexError) and leave the
tensors it writes untouched, or return what its pure-PyTorch reference returns.

    python -m tests.ops.fuzz_cases [op ...]     # all ops when none are named

prints each example before running it, so a crash leaves the example that caused it as the
last line. Examples are derandomized (the same on every run); KR_FUZZ_EXAMPLES sets how many
per op.
"""
import math
import os
import sys

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kr_mini_llm import ops
from kr_mini_llm.ops.decode_attention import CACHE_LAYOUTS
from kr_mini_llm.ops.decode_linear import x_format

from .utils import TOL

CLEAN_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
OTHER_DTYPES = [torch.int32, torch.int64, torch.int8, torch.bool, torch.complex64]
INT_EXTREMES = [0, 1, -1, 2, 2**31 - 1, 2**31, -2**31, 2**62, 2**63 - 3, 2**63 - 1, -2**63]
FLOAT_EXTREMES = [0.0, -1.0, 1e-30, 1e30, math.inf, -math.inf, math.nan]
# int mutations thrice: they reach the bound checks, the rest mostly the shape checks
MUTATIONS = ["none", "none", "dtype", "rank", "size", "transposed", "strided", "expanded", "meta",
             "meta_one", "special", "zero_dim", "huge_empty", "int", "int", "int"]


def randn(g, shape, dtype=torch.float32):
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# ---- mutations ----------------------------------------------------------------------------------

def _mutate_tensor(draw, t, kind, g):
    """t spoiled by `kind` (None: this kind does not apply to t)."""
    if kind == "dtype":
        return t.to(draw(st.sampled_from([d for d in FLOATS + OTHER_DTYPES if d != t.dtype])))
    if kind == "rank":
        return t.unsqueeze(0) if draw(st.booleans()) or t.dim() == 0 else t.reshape(-1) if t.dim() > 1 else t[0:0].sum()
    if kind in ("size", "zero_dim", "huge_empty") and t.dim() > 0:
        shape = list(t.shape)
        i = draw(st.integers(0, t.dim() - 1))
        if kind == "size":
            shape[i] = draw(st.integers(0, 6).filter(lambda n: n != shape[i]))
        elif kind == "zero_dim":
            shape[i] = 0
        else:
            j = draw(st.integers(0, t.dim() - 1))
            shape[i], shape[j] = 0, draw(st.sampled_from([2**31, 2**40, 2**62]))
            if i == j:
                shape[i] = 0
            try:
                return torch.empty(shape, dtype=t.dtype)
            except RuntimeError:  # the storage size overflows: torch refuses it first
                return None
        return randn(g, shape).to(t.dtype) if t.is_floating_point() else torch.zeros(shape, dtype=t.dtype)
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "strided" and t.dim() >= 1:
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if kind == "expanded" and t.dim() >= 1 and t.numel() > 0:
        return t.narrow(0, 0, 1).expand(t.shape)
    if kind == "meta_one":
        return t.to("meta")
    if kind == "special" and t.is_floating_point() and t.numel() > 0:
        t = t.clone()
        flat = t.view(-1) if t.is_contiguous() else None
        if flat is not None:
            for _ in range(draw(st.integers(1, 3))):
                flat[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return t
    return None


def mutate(draw, args, tensors, ints, g):
    """Applies one drawn mutation to args (a dict) in place; returns its description."""
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "none":
        return kind
    if kind == "meta":
        for name in tensors:
            if isinstance(args[name], torch.Tensor):
                args[name] = args[name].to("meta")
        return kind
    if kind == "int":
        if not ints:
            return "none"
        name = draw(st.sampled_from(sorted(ints)))
        args[name] = ints[name](draw)
        return f"int {name}={args[name]!r}"
    names = [n for n in tensors if isinstance(args[n], torch.Tensor)]
    name = draw(st.sampled_from(names))
    new = _mutate_tensor(draw, args[name], kind, g)
    if new is None:
        return "none"
    args[name] = new
    return f"{kind} {name}"


def int_extreme(draw):
    return draw(st.sampled_from(INT_EXTREMES))


def size_extreme(draw):
    """int64 extremes for a size argument: none allocatable (2**31 rows of a table would be 8 GB
    of work, not a bug)."""
    return draw(st.sampled_from([0, 1, -1, 3, 2**62, 2**63 - 2, 2**63 - 1, -2**63]))


def float_extreme(draw):
    return draw(st.sampled_from(FLOAT_EXTREMES))


def index_extreme(name):
    """Sets one element of the index tensor `name` to an int64 extreme (returns a setter)."""
    def set_one(args, draw):
        t = args[name].clone()
        if t.numel():
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(
                [v for v in INT_EXTREMES if torch.iinfo(t.dtype).min <= v <= torch.iinfo(t.dtype).max]))
        return t
    return set_one


# ---- comparison -----------------------------------------------------------------------------------

def _lowest(args):
    order = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    found = [a.dtype for a in args.values() if isinstance(a, torch.Tensor) and a.dtype in order]
    return min(found, key=order.index) if found else torch.float32


def same(out, ref, tol):
    """out equals ref within tol (atol, rtol); a non-finite reference value must be met by a
    non-finite one (the kernels may reach inf where the reference reaches NaN, or back)."""
    if isinstance(ref, (tuple, list)):
        assert isinstance(out, (tuple, list)) and len(out) == len(ref)
        for o, r in zip(out, ref):
            same(o, r, tol)
        return
    if ref is None:
        assert out is None
        return
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"dtype {out.dtype} != reference {ref.dtype}"
    assert out.device == ref.device, f"device {out.device} != reference {ref.device}"
    if out.device.type == "meta" or out.numel() == 0:
        return
    o, r = out.double(), ref.double()
    finite = torch.isfinite(r)
    assert torch.equal(torch.isfinite(o), finite) or not finite.all(), "non-finite values where the reference has none"
    assert (~torch.isfinite(o[~finite])).all(), "finite values where the reference has inf/NaN"
    torch.testing.assert_close(o[finite], r[finite], **tol)


def clone_args(args):
    return {k: (v.clone() if isinstance(v, torch.Tensor) and v.device.type != "meta" else v)
            for k, v in args.items()}


def on_meta(args):
    return any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in args.values())


def check(spec, args, desc):
    """Runs op on args: a clean error that wrote nothing, or the reference's result."""
    print(f"[{spec.name}] {desc}: " + ", ".join(
        f"{k}={tuple(v.shape)}/{v.dtype}/{v.device.type}/{'c' if v.is_contiguous() else 'nc'}"
        if isinstance(v, torch.Tensor) else f"{k}={v!r}" for k, v in args.items()), flush=True)
    written = {n: args[n].clone() for n in spec.writes
               if isinstance(args.get(n), torch.Tensor) and args[n].device.type != "meta"}
    ref_args = clone_args(args)
    try:
        out = spec.call(**args)
    except CLEAN_ERRORS:
        for n, before in written.items():
            assert torch.equal(args[n], before), f"{spec.name} raised but wrote {n}"
        return
    devices = {v.device.type for v in args.values() if isinstance(v, torch.Tensor)}
    assert not ("meta" in devices and len(devices) > 1), \
        f"{spec.name} accepted tensors on {sorted(devices)} (an uninitialised result instead of an error)"
    if on_meta(args) or not spec.comparable(args):  # no values to compare: it ran, and cleanly
        return
    ref = spec.ref(**ref_args)
    same(out, ref, spec.tol(args))
    for n in written:
        same(args[n], ref_args[n], spec.tol(args))


# ---- the ops ------------------------------------------------------------------------------------

def dtype_tol(scale=1.0):
    """The tolerance of the lowest-precision float argument, widened by scale (x4 always: sums of
    a few terms in another order)."""
    def tol(args):
        t = TOL[_lowest(args)]
        return dict(atol=t["atol"] * 4 * scale, rtol=t["rtol"] * 4 * scale)
    return tol


class Spec:
    """build(draw, g) -> (args, tensors that mutations may spoil, {int arg: drawer}, {index tensor: setter});
    tol(args) -> assert_close's atol/rtol for the comparison with ref."""

    def __init__(self, name, build, call, ref, writes=(), tol=dtype_tol(), comparable=lambda args: True):
        self.name, self.build, self.call, self.ref, self.writes, self.tol = name, build, call, ref, writes, tol
        self.comparable = comparable


def moderate_scale(args):
    """attention subtracts each row's rounded max from its scores fused (x * scale - max in one
    FMA): past |score| ~ 1e7 that rounding error alone overflows exp, so a scale like 1e30
    gives zeros where the reference gives v. Such scales are checked for a clean run only."""
    s = args["scale"]
    return s is None or abs(s) <= 1e3


def native_or_finite(name):
    """On the native path always comparable. The device fallbacks attend through SDPA, whose causal mask
    adds -inf to a masked row's score: a NaN there (a key made from a NaN input) spreads to the step's
    other query rows, rows the native kernel never reads. So non-finite inputs are compared on the
    native path only; through the fallback they must still run cleanly."""
    def comparable(args):
        if ops.backend_report("cpu")[name] == "native":
            return True
        return all(bool(torch.isfinite(v).all()) for v in args.values()
                   if isinstance(v, torch.Tensor) and v.is_floating_point() and v.device.type != "meta")
    return comparable


def dims(draw, lo=1, hi=4):
    return draw(st.integers(lo, hi))


def b_rms_norm(draw, g):
    shape = [dims(draw) for _ in range(draw(st.integers(1, 3)))]
    dt = draw(st.sampled_from(FLOATS))
    args = dict(x=randn(g, shape, dt), weight=randn(g, shape[-1:], dt), eps=1e-6)
    return args, ["x", "weight"], {"eps": float_extreme}, {}


def b_rotary(draw, g):
    B, T, H, half = dims(draw), dims(draw), dims(draw), dims(draw)
    dt = draw(st.sampled_from(FLOATS))
    pos = torch.randint(0, 64, (B, T) if draw(st.booleans()) else (T,), generator=g)
    cos, sin = ops.rope_tables(2 * half, pos, dtype=draw(st.sampled_from([torch.float32, dt])))
    return dict(x=randn(g, (B, T, H, 2 * half), dt), cos=cos, sin=sin), ["x", "cos", "sin"], {}, {}


def b_swiglu(draw, g):
    shape = [dims(draw) for _ in range(draw(st.integers(0, 3)))]
    dt = draw(st.sampled_from(FLOATS))
    return dict(gate=randn(g, shape, dt), up=randn(g, shape, dt)), ["gate", "up"], {}, {}


def b_argmax(draw, g):
    shape = [dims(draw, 1, 40) for _ in range(draw(st.integers(1, 3)))]
    x = randn(g, shape, draw(st.sampled_from(FLOATS)))
    if draw(st.booleans()):  # ties: copies of each row's max further on
        x = torch.where(x >= x.amax(-1, keepdim=True) - 0.5, x.amax(-1, keepdim=True), x)
    return dict(x=x), ["x"], {}, {}


def b_dropout(draw, g):
    shape = [dims(draw) for _ in range(draw(st.integers(0, 3)))]
    args = dict(x=randn(g, shape, draw(st.sampled_from(FLOATS))), p=draw(st.sampled_from([0.1, 0.5, 0.9])),
                training=True, seed=torch.tensor(draw(st.integers(-2**63, 2**63 - 1)), dtype=torch.int64))
    return args, ["x", "seed"], {"p": float_extreme}, {}


def b_attention(draw, g):
    B, Tq, Hkv, G, D = dims(draw), dims(draw, 1, 6), dims(draw, 1, 2), dims(draw, 1, 3), dims(draw, 1, 8)
    causal = draw(st.booleans())
    Tk = Tq if causal else dims(draw, 1, 6)
    dt = draw(st.sampled_from(FLOATS))
    args = dict(q=randn(g, (B, Tq, Hkv * G, D), dt), k=randn(g, (B, Tk, Hkv, D), dt),
                v=randn(g, (B, Tk, Hkv, D), dt), causal=causal, scale=draw(st.sampled_from([None, 0.5])))
    return args, ["q", "k", "v"], {"scale": float_extreme}, {}


def b_lce(draw, g):
    N, C, V = dims(draw, 0, 6), dims(draw), dims(draw, 1, 9)
    dt = draw(st.sampled_from(FLOATS))
    targets = torch.randint(0, V, (N,), generator=g)
    ignore = draw(st.sampled_from([-100, 0, V]))
    if N:
        targets[0] = ignore
    args = dict(hidden=randn(g, (N, C), dt), weight=randn(g, (V, C), dt), targets=targets,
                ignore_index=ignore, reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                chunk_size=draw(st.sampled_from([None, 1, 2, 5])))
    return (args, ["hidden", "weight", "targets"],
            {"ignore_index": int_extreme, "chunk_size": int_extreme}, {"targets": index_extreme("targets")})


def _cache_case(draw, g):
    B, Hkv, G, D, Tmax = dims(draw, 1, 3), dims(draw, 1, 2), dims(draw, 1, 3), dims(draw, 1, 8), dims(draw, 1, 9)
    S = draw(st.integers(1, Tmax))
    lens = torch.tensor([draw(st.integers(0, Tmax - S)) for _ in range(B)],
                        dtype=draw(st.sampled_from([torch.int64, torch.int32])))
    dt = draw(st.sampled_from(FLOATS))
    return B, Hkv, G, D, Tmax, S, lens, dt


def _caches(draw, g, B, Tmax, Hkv, D, dt):
    """A k/v cache pair [B, Tmax, Hkv, D] of random values in a drawn layout (both alike)."""
    layout = draw(st.sampled_from(sorted(CACHE_LAYOUTS)))
    pair = []
    for _ in range(2):
        c = ops.new_cache(B, Tmax, Hkv, D, dt, layout=layout)
        c.copy_(randn(g, (B, Tmax, Hkv, D), dt))
        pair.append(c)
    return pair


def b_decode(draw, g):
    B, Hkv, G, D, Tmax, S, lens, dt = _cache_case(draw, g)
    kc, vc = _caches(draw, g, B, Tmax, Hkv, D, dt)
    args = dict(q=randn(g, (B, S, Hkv * G, D), dt), k_cache=kc, v_cache=vc, cache_lens=lens + S, scale=None)
    return (args, ["q", "k_cache", "v_cache", "cache_lens"], {"scale": float_extreme},
            {"cache_lens": index_extreme("cache_lens")})


def b_append(draw, g):
    B, Hkv, _, D, Tmax, S, lens, dt = _cache_case(draw, g)
    kc, vc = _caches(draw, g, B, Tmax, Hkv, D, dt)
    args = dict(k_cache=kc, v_cache=vc,
                k_new=randn(g, (B, S, Hkv, D), dt), v_new=randn(g, (B, S, Hkv, D), dt), cache_lens=lens)
    return (args, ["k_cache", "v_cache", "k_new", "v_new", "cache_lens"], {},
            {"cache_lens": index_extreme("cache_lens")})


def b_step(draw, g):
    B, Hkv, G, D, Tmax, S, lens, dt = _cache_case(draw, g)
    D = 2 * D
    Hq = Hkv * G
    cdt = draw(st.sampled_from([dt, torch.float32]))
    norms = draw(st.booleans())
    pos = lens.long().unsqueeze(1) + torch.arange(S)
    cos, sin = ops.rope_tables(D, pos, dtype=dt)
    kc, vc = _caches(draw, g, B, Tmax, Hkv, D, cdt)
    args = dict(qkv=randn(g, (B, S, (Hq + 2 * Hkv) * D), dt),
                q_norm=randn(g, (D,), dt) if norms else None, k_norm=randn(g, (D,), dt) if norms else None,
                eps=1e-6, cos=cos, sin=sin, k_cache=kc, v_cache=vc, cache_lens=lens, num_heads=Hq)
    return (args, ["qkv", "q_norm", "k_norm", "cos", "sin", "k_cache", "v_cache", "cache_lens"],
            {"num_heads": int_extreme, "eps": float_extreme}, {"cache_lens": index_extreme("cache_lens")})


def b_block(draw, g):
    B, Hkv, G, D, Tmax, S, lens, cdt = _cache_case(draw, g)
    D = 2 * D
    Hq, C, I = Hkv * G, dims(draw, 1, 9), dims(draw, 1, 6)
    xdt = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    norms = draw(st.booleans())
    pos = lens.long().unsqueeze(1) + torch.arange(S)
    cos, sin = ops.rope_tables(D, pos, dtype=xdt)

    def weight(out, inp):  # fp32 weights: the comparison is of the block, not of the quantizers
        return randn(g, (out, inp)) * inp**-0.5

    kc, vc = _caches(draw, g, B, Tmax, Hkv, D, cdt)
    args = dict(x=randn(g, (B, S, C), xdt), norm1=randn(g, (C,)), qkv_weight=weight((Hq + 2 * Hkv) * D, C),
                qkv_scales=None, q_norm=randn(g, (D,)) if norms else None, k_norm=randn(g, (D,)) if norms else None,
                cos=cos, sin=sin, k_cache=kc, v_cache=vc, cache_lens=lens, num_heads=Hq, o_weight=weight(C, Hq * D), o_scales=None, norm2=randn(g, (C,)),
                gate_up_weight=weight(2 * I, C), gate_up_scales=None, down_weight=weight(C, I), down_scales=None,
                eps=1e-6)
    tensors = [n for n, v in args.items() if isinstance(v, torch.Tensor)]
    return (args, tensors, {"num_heads": int_extreme, "eps": float_extreme},
            {"cache_lens": index_extreme("cache_lens")})


def _decode_linear_case(draw, g, swiglu):
    N, K, M = dims(draw, 1, 3), 8 * dims(draw, 1, 4), 2 * dims(draw, 1, 4)
    xdt = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    wdt = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.int8, torch.uint8]))  # uint8: int4
    if wdt == torch.uint8:
        K = 32 * dims(draw, 1, 2)
    w = randn(g, (M, K))
    scales = None
    if wdt == torch.int8:
        w, scales = ops.quantize_int8(w, draw(st.sampled_from([None, 8])))
    elif wdt == torch.uint8:
        w, scales = ops.quantize_int4(w, draw(st.sampled_from([32, K])))
    else:
        w = w.to(wdt)
    args = dict(x=randn(g, (N, K), xdt), weight=w, scales=scales)
    if not swiglu:
        args["residual"] = randn(g, (N, M), xdt) if draw(st.booleans()) else None
    return args, [n for n in ("x", "weight", "scales", "residual") if n in args], {}, {}


def _decode_linear_tol(args):
    """The kernel meets int8/int4/bf16 weights with x quantized to int8 (error up to max|x| / 254
    per input) or rounded to bf16; sums of K products."""
    w, s = args["weight"], args.get("scales")
    K = args["x"].shape[-1] if args["x"].dim() else 0
    groups = s.shape[1] if s is not None and s.dim() == 2 and s.shape[1] else None
    fmt, _ = x_format(w.dtype, K // groups if groups else None)
    K = max(K, 1)
    rel = {"int8": 1 / 100, "bf16": 1 / 100}.get(fmt, 1e-4)
    if args["x"].dtype == torch.bfloat16:
        rel = max(rel, 1.6e-2)
    tol = dict(atol=rel * K**0.5 * 8, rtol=rel * 4)
    if fmt == "int8" and "residual" not in args:
        tol["atol"] = max(tol["atol"], _swiglu_int8_atol(args))
    return tol


def _swiglu_int8_atol(args):
    """SwiGLU multiplies the gate's error by up (and up's by silu(gate)): with x quantized to int8,
    each projection is off by at most e = max|x| / 254 * max_j sum_k |w_jk|, so the output by
    at most e * (max|up| + max|silu(gate)| + e), x1.5 for fp32 and silu's slope (<= 1.1)."""
    x, w, s = args["x"], args["weight"], args["scales"]
    if x.numel() == 0 or w.numel() == 0 or not (torch.isfinite(x).all() and torch.isfinite(s).all()):
        return 0.0
    w64 = (ops.dequantize_int4 if w.dtype == torch.uint8 else ops.dequantize_int8)(w, s, torch.float64)
    e = x.double().abs().max().item() / 254 * w64.abs().sum(1).max().item()
    gate, up = (x.double() @ w64.T).chunk(2, dim=-1)
    return 1.5 * e * (up.abs().max().item() + torch.nn.functional.silu(gate).abs().max().item() + e)


def b_linear(draw, g):
    N, K, M = dims(draw, 0, 5), dims(draw), dims(draw)
    dt = draw(st.sampled_from(FLOATS))
    return dict(x=randn(g, (N, K), dt), weight=randn(g, (M, K), dt)), ["x", "weight"], {}, {}


def b_rope_tables(draw, g):
    args = dict(head_dim=2 * dims(draw, 1, 8), positions=torch.randint(0, 50, (dims(draw),), generator=g),
                dtype=draw(st.sampled_from(FLOATS)))
    return args, ["positions"], {"head_dim": size_extreme}, {"positions": index_extreme("positions")}


def rope_ref(head_dim, positions, dtype):
    """The tables at these positions, computed at each position alone (rows do not interact)."""
    rows = [ops.rope_tables(head_dim, p.reshape(1), dtype=torch.float64) for p in positions.view(-1)]
    if not rows:
        return ops.rope_tables(head_dim, positions, dtype=dtype)
    cos = torch.cat([c for c, _ in rows]).view(*positions.shape, head_dim // 2)
    sin = torch.cat([s for _, s in rows]).view(*positions.shape, head_dim // 2)
    return cos.to(dtype), sin.to(dtype)


def b_quantize(draw, g):
    M, K = dims(draw), 4 * dims(draw)
    args = dict(weight=randn(g, (M, K), draw(st.sampled_from(FLOATS))), group_size=draw(st.sampled_from([None, 2, 4])))
    return args, ["weight"], {"group_size": int_extreme}, {}


def quantize_roundtrip(weight, group_size):
    q, s = ops.quantize_int8(weight, group_size)
    return ops.dequantize_int8(q, s, torch.float64)


def b_quantize_int4(draw, g):
    M, K = dims(draw), 32 * dims(draw, 1, 3)
    args = dict(weight=randn(g, (M, K), draw(st.sampled_from(FLOATS))), group_size=draw(st.sampled_from([32, K])))
    return args, ["weight"], {"group_size": int_extreme}, {}


def quantize_int4_roundtrip(weight, group_size):
    q, s = ops.quantize_int4(weight, group_size)
    return ops.dequantize_int4(q, s, torch.float64)


def quantize_int4_tol(args):
    """Q4_0's rule: within half a step of max|w| / 8, or a whole step where +8 clamps to 7."""
    w = args["weight"]
    amax = w.double().abs().max().item() if w.numel() and w.device.type != "meta" else 0.0
    return dict(atol=amax / 8 * 1.01 + 1e-12, rtol=0.0)


def quantize_tol(args):
    """Symmetric int8 rounds each weight to within half a step, max|w| / 254 (x1.01: the
    float32 scale)."""
    w = args["weight"]
    amax = w.double().abs().max().item() if w.numel() and w.device.type != "meta" else 0.0
    return dict(atol=amax / 254 * 1.01 + 1e-12, rtol=0.0)


SPECS = {s.name: s for s in [
    Spec("rms_norm", b_rms_norm, ops.rms_norm, ops.rms_norm_reference),
    Spec("rotary", b_rotary, ops.rotary, ops.rotary_reference),
    Spec("swiglu", b_swiglu, ops.swiglu, ops.swiglu_reference),
    Spec("dropout", b_dropout, ops.dropout, ops.dropout_reference, tol=lambda args: dict(atol=0.0, rtol=0.0)),
    Spec("attention", b_attention, ops.attention, ops.attention_reference, comparable=moderate_scale),
    Spec("linear_cross_entropy", b_lce, ops.linear_cross_entropy,
         lambda chunk_size, **a: ops.linear_cross_entropy_reference(**a), tol=dtype_tol(10.0)),
    Spec("decode_attention", b_decode, ops.decode_attention, ops.decode_attention_reference,
         comparable=native_or_finite("decode_attention")),
    Spec("kv_cache_append", b_append, ops.kv_cache_append, ops.kv_cache_append_reference,
         writes=("k_cache", "v_cache")),
    Spec("decode_attention_step", b_step, ops.decode_attention_step, ops.decode_attention_step_reference,
         writes=("k_cache", "v_cache"), tol=dtype_tol(10.0), comparable=native_or_finite("decode_attention_step")),
    Spec("decode_linear", lambda d, g: _decode_linear_case(d, g, False), ops.decode_linear,
         ops.decode_linear_reference, tol=_decode_linear_tol),
    Spec("decode_linear_swiglu", lambda d, g: _decode_linear_case(d, g, True), ops.decode_linear_swiglu,
         ops.decode_linear_swiglu_reference, tol=_decode_linear_tol),
    Spec("decode_block", b_block, ops.decode_block, ops.decode_block_reference,
         writes=("k_cache", "v_cache"), tol=dtype_tol(30.0), comparable=native_or_finite("decode_block")),
    Spec("linear", b_linear, ops.linear, ops.linear_reference),
    Spec("rope_tables", b_rope_tables, ops.rope_tables, rope_ref),
    Spec("argmax", b_argmax, ops.argmax, ops.argmax_reference, tol=lambda args: dict(atol=0, rtol=0)),
    Spec("quantize_int8", b_quantize, quantize_roundtrip,
         lambda weight, group_size: weight.double(), tol=quantize_tol),
    Spec("quantize_int4", b_quantize_int4, quantize_int4_roundtrip,
         lambda weight, group_size: weight.double(), tol=quantize_int4_tol),
]}


def example(spec):
    @st.composite
    def draw_case(draw):
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        args, tensors, ints, indexes = spec.build(draw, g)
        ints = dict(ints)
        for name, setter in indexes.items():  # an index tensor's extreme element counts as an int mutation
            ints[name] = lambda d, name=name, setter=setter: setter(args, d)
        desc = mutate(draw, args, tensors, ints, g)
        return args, desc
    return draw_case()


def run(name, max_examples):
    spec = SPECS[name]

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(example(spec))
    def fuzz(case):
        args, desc = case
        with torch.no_grad():
            check(spec, args, desc)

    fuzz()


def main(argv):
    names = argv or list(SPECS)
    n = int(os.environ.get("KR_FUZZ_EXAMPLES", "60"))
    torch.set_num_threads(1)  # the examples are tiny; one thread keeps the shared cores free
    for name in names:
        print(f"== {name}: {n} examples (derandomized)", flush=True)
        run(name, n)
    print("fuzz: all passed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
