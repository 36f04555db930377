"""The KV-cache step of generation: `kv_cache_append` then `decode_attention`.

Caches are preallocated `[B, Tmax, Hkv, D]` tensors, contiguous or head-major (`new_cache`;
KVCache's layout); `cache_lens` `[B]` (int32 or int64, read on the CPU) counts the valid rows of
each sequence. A generation step is::

    kv_cache_append(k_cache, v_cache, k_new, v_new, cache_lens)   # rows lens .. lens+S-1
    cache_lens += S                                                 # the caller advances it
    out = decode_attention(q, k_cache, v_cache, cache_lens)        # q: the same S tokens

`decode_attention_step` is that whole step for one block in a single call, from the block's
fused q/k/v projection: qk-norm, RoPE, append, attention (what DecodeModel runs).

`decode_attention` is inference-only (no backward); train with `kr_mini_llm.ops.attention`.
"""
from typing import Optional

import torch

from ._checks import check_float, check_same_dtype, dtype_name
from ._device_attention import sdpa_decode
from ._library import acc_dtype, ops, qualname, register_fake, register_fallback
from .rms_norm import rms_norm_reference
from .rotary import rotary_reference

_INFERENCE_ONLY = (
    "kr_mini_llm.ops.decode_attention is inference-only and has no backward: train with "
    "kr_mini_llm.ops.attention (full-sequence attention), and run generation under "
    "torch.no_grad() or torch.inference_mode()")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_lens: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Attention of the newest S tokens q [B, S, Hq, D] over the KV cache [B, Tmax, Hkv, D].

    q's tokens are the last S of the cache_lens[b] valid rows of sequence b (append them first);
    query s attends causally to rows 0 .. cache_lens[b]-S+s. GQA/MQA when Hq is a multiple of
    Hkv; scale defaults to 1/sqrt(D). Returns [B, S, Hq, D] in q's dtype.
    """
    return ops.decode_attention(q, k_cache, v_cache, cache_lens, scale)


def kv_cache_append(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                    v_new: torch.Tensor, cache_lens: torch.Tensor) -> None:
    """Writes k_new/v_new [B, S, Hkv, D] into cache rows cache_lens[b] .. cache_lens[b]+S-1 in
    place. cache_lens is not changed: the caller advances it by S."""
    ops.kv_cache_append(k_cache, v_cache, k_new, v_new, cache_lens)


def decode_attention_step(qkv: torch.Tensor, q_norm: Optional[torch.Tensor], k_norm: Optional[torch.Tensor],
                          eps: float, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, cache_lens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A block's attention in a decode step, from its fused projection qkv [B, S, (Hq + 2 Hkv) * D]
    (q, k, v side by side): q and k get per-head RMSNorm when q_norm/k_norm [D] are given (qk_norm)
    and RoPE with cos/sin [B, S, D/2]; k and v are appended to the caches (cast to their dtype) at
    rows cache_lens[b]..; then attention over the cache. Returns [B, S, Hq * D] in qkv's dtype.
    cache_lens is not changed: the caller advances it by S after the last block. Inference-only:
    it writes the caches in place, so it has no backward (as kv_cache_append)."""
    return ops.decode_attention_step(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads)


# ------------------------------------------------------------------------------------------
# References (pure PyTorch; the oracles in the tests)

def decode_attention_reference(q, k_cache, v_cache, cache_lens, scale=None):
    """Pure-PyTorch decode attention (float32 accumulation; float64 stays float64)."""
    B, S, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    G = Hq // Hkv
    scale = D ** -0.5 if scale is None else scale
    dt = acc_dtype(q.dtype)
    outs = []
    for b, L in enumerate(cache_lens.tolist()):
        qb = q[b].to(dt).reshape(S, Hkv, G, D)
        kb = k_cache[b, :L].to(dt)
        vb = v_cache[b, :L].to(dt)
        s = torch.einsum("shgd,thd->hgst", qb, kb) * scale
        pos = torch.arange(L - S, L, device=q.device).unsqueeze(1)
        t = torch.arange(L, device=q.device).unsqueeze(0)
        s = s.masked_fill(t > pos, float("-inf"))
        o = torch.einsum("hgst,thd->shgd", s.softmax(-1), vb).reshape(S, Hq, D)
        outs.append(o.to(q.dtype))
    if not outs:
        return q.new_empty(q.shape)
    return torch.stack(outs)


def kv_cache_append_reference(k_cache, v_cache, k_new, v_new, cache_lens) -> None:
    """Pure-PyTorch append: copies k_new/v_new into rows cache_lens[b] .. +S-1, in place."""
    S = k_new.shape[1]
    k_new, v_new = k_new.clone(), v_new.clone()  # new rows may be a view of the cache rows they go to
    for b, L in enumerate(cache_lens.tolist()):
        k_cache[b, L:L + S].copy_(k_new[b])
        v_cache[b, L:L + S].copy_(v_new[b])


def _step(parts, qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads):
    """decode_attention_step from its parts (rms_norm, rotary, kv_cache_append, decode_attention),
    each (args) -> the part's result: the reference passes the references, the fallback the ops."""
    rms_norm, rotary, append, attend = parts
    B, S, _ = qkv.shape
    Hq, Hkv, D = num_heads, k_cache.shape[2], k_cache.shape[3]
    x = qkv.reshape(B, S, Hq + 2 * Hkv, D)
    q, k, v = x[:, :, :Hq], x[:, :, Hq:Hq + Hkv], x[:, :, Hq + Hkv:]
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k = rotary(q, cos, sin), rotary(k, cos, sin)
    cd = k_cache.dtype
    append(k_cache, v_cache, k.to(cd), v.to(cd), cache_lens)
    out = attend(q.to(cd), k_cache, v_cache, cache_lens + S)
    return out.reshape(B, S, Hq * D).to(qkv.dtype)


def decode_attention_step_reference(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads):
    """Pure-PyTorch decode_attention_step: the references of its parts, in its order."""
    parts = (rms_norm_reference, rotary_reference, kv_cache_append_reference, decode_attention_reference)
    return _step(parts, qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads)


# ------------------------------------------------------------------------------------------
# Argument checks shared by the fallback kernels (same messages as the C++ kernels)

def _check_caches(op, k_cache, v_cache):
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_float(c, op, name)
        if c.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D [B, Tmax, Hkv, D], got shape {list(c.shape)}")
        if not any(_dense_in_order(c, order) for order in CACHE_LAYOUTS.values()):
            raise ValueError(f"{op}: {name} must be a [B, Tmax, Hkv, D] tensor laid out contiguous or head-major "
                             "(a contiguous [B, Hkv, Tmax, D] tensor .permute(0, 2, 1, 3), as KVCache makes it; "
                             f"the cache is written in place), got shape {list(c.shape)} with strides {c.stride()}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"{op}: v_cache must have the shape of k_cache [B, Tmax, Hkv, D] = "
                         f"{list(k_cache.shape)}, got {list(v_cache.shape)}")
    check_same_dtype(v_cache, "v_cache", k_cache, "k_cache", op)
    # the kernels take both caches' strides from k_cache: they must agree where a dim has more than one index
    if any(n > 1 and v_cache.stride(d) != k_cache.stride(d) for d, n in enumerate(k_cache.shape)):
        raise ValueError(f"{op}: v_cache must have the memory layout of k_cache (strides {list(k_cache.stride())}), "
                         f"got strides {list(v_cache.stride())}")
    if k_cache.shape[2] == 0:
        raise ValueError(f"{op}: k_cache must have at least one KV head, got {list(k_cache.shape)}")


# The memory layouts a cache [B, Tmax, Hkv, D] may have: its dims from outermost to innermost.
CACHE_LAYOUTS = {"contiguous": (0, 1, 2, 3), "head-major": (0, 2, 1, 3)}


def _dense_in_order(c, order):
    """Whether c has the strides of a dense tensor whose dims, outermost first, are `order` (dims
    of size 1 may have any stride, and an empty tensor any strides, as in is_contiguous)."""
    if c.numel() == 0:
        return True
    expected = 1
    for d in reversed(order):
        if c.shape[d] != 1 and c.stride(d) != expected:
            return False
        expected *= c.shape[d]
    return True


def new_cache(batch_size, max_length, num_kv_heads, head_dim, dtype=torch.float32, device="cpu", layout="head-major"):
    """A zeroed cache [B, Tmax, Hkv, D] in one of CACHE_LAYOUTS: head-major (what KVCache allocates)
    keeps each head's rows side by side, so attention over one KV head reads one contiguous stream."""
    if layout not in CACHE_LAYOUTS:
        raise ValueError(f"new_cache: layout must be one of {sorted(CACHE_LAYOUTS)}, got {layout!r}")
    order = CACHE_LAYOUTS[layout]
    sizes = (batch_size, max_length, num_kv_heads, head_dim)
    storage = torch.zeros([sizes[d] for d in order], dtype=dtype, device=device)
    return storage.permute([order.index(d) for d in range(4)])


def _read_lens(op, cache_lens, B):
    if cache_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: cache_lens must be int32 or int64, got {dtype_name(cache_lens.dtype)}")
    if cache_lens.dim() != 1 or cache_lens.shape[0] != B:
        raise ValueError(f"{op}: cache_lens must be 1-D [B] = [{B}], got {list(cache_lens.shape)}")
    return cache_lens.tolist()


def _check_decode(q, k_cache, v_cache, cache_lens):
    op = "decode_attention"
    check_float(q, op, "q")
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be 4-D [B, S, Hq, D], got shape {list(q.shape)}")
    _check_caches(op, k_cache, v_cache)
    check_same_dtype(q, "q", k_cache, "k_cache", op)
    B, S, Hq, D = q.shape
    _, Tmax, Hkv, Dk = k_cache.shape
    if k_cache.shape[0] != B:
        raise ValueError(f"{op}: k_cache batch size ({k_cache.shape[0]}) must match q [B, S, Hq, D]")
    if Dk != D:
        raise ValueError(f"{op}: k_cache head_dim ({Dk}) must match q head_dim D = {D}")
    if Hq % Hkv:
        raise ValueError(f"{op}: the query heads Hq = {Hq} (q.size(2)) must be a multiple of the KV "
                         f"heads Hkv = {Hkv} (k_cache.size(2))")
    for b, L in enumerate(_read_lens(op, cache_lens, B)):
        if not S <= L <= Tmax:
            raise ValueError(f"{op}: cache_lens[{b}] = {L} must be in [S, Tmax] = [{S}, {Tmax}]")


def _check_append(k_cache, v_cache, k_new, v_new, cache_lens):
    op = "kv_cache_append"
    _check_caches(op, k_cache, v_cache)
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D [B, S, Hkv, D], got shape {list(t.shape)}")
    check_same_dtype(k_new, "k_new", k_cache, "k_cache", op)
    check_same_dtype(v_new, "v_new", v_cache, "v_cache", op)
    B, Tmax, Hkv, D = k_cache.shape
    S = k_new.shape[1]
    if (k_new.shape[0], k_new.shape[2], k_new.shape[3]) != (B, Hkv, D):
        raise ValueError(f"{op}: k_new must be [B, S, Hkv, D] with B = {B}, Hkv = {Hkv}, D = {D} "
                         f"as in k_cache {list(k_cache.shape)}, got {list(k_new.shape)}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"{op}: v_new must have the shape of k_new [B, S, Hkv, D] = "
                         f"{list(k_new.shape)}, got {list(v_new.shape)}")
    if S > Tmax:
        raise ValueError(f"{op}: S = {S} new rows (k_new.size(1)) do not fit a cache of Tmax = {Tmax} rows "
                         "(k_cache.size(1))")
    for b, L in enumerate(_read_lens(op, cache_lens, B)):
        if L < 0 or L + S > Tmax:
            raise ValueError(f"{op}: cache_lens[{b}] = {L} leaves no room for S = {S} new rows: need "
                             f"0 <= cache_lens[{b}] and cache_lens[{b}] + S <= Tmax = {Tmax}")


def _check_step(qkv, q_norm, k_norm, k_cache, v_cache, num_heads):
    op = "decode_attention_step"
    check_float(qkv, op, "qkv")
    if qkv.dim() != 3:
        raise ValueError(f"{op}: qkv must be 3-D [B, S, (num_heads + 2 Hkv) * D], got shape {list(qkv.shape)}")
    _check_caches(op, k_cache, v_cache)
    B, Hkv, D = k_cache.shape[0], k_cache.shape[2], k_cache.shape[3]
    if num_heads <= 0 or num_heads % Hkv:
        raise ValueError(f"{op}: num_heads = {num_heads} must be a positive multiple of the KV heads "
                         f"Hkv = {Hkv} (k_cache.size(2))")
    width = (num_heads + 2 * Hkv) * D
    if width > 2**63 - 1:  # the kernel forms the width in int64 only where it fits
        raise ValueError(f"{op}: num_heads = {num_heads} is too large: (num_heads + 2 Hkv) * D with Hkv = {Hkv}, "
                         f"D = {D} does not fit in int64")
    if qkv.shape[2] != width:
        raise ValueError(f"{op}: qkv's last dim must be (num_heads + 2 Hkv) * D = ({num_heads} + 2 * {Hkv}) * "
                         f"{D} = {width} (q, k, v side by side), got {list(qkv.shape)}")
    if qkv.shape[0] != B:
        raise ValueError(f"{op}: k_cache batch size ({B}) must match qkv {list(qkv.shape)}")
    if (q_norm is None) != (k_norm is None):
        raise ValueError(f"{op}: q_norm and k_norm go together (qk_norm): pass both or neither")


# ------------------------------------------------------------------------------------------
# Kernels for backends without a native one, fake kernels, autograd

@register_fallback("decode_attention", "sdpa")
def _decode_attention_fallback(q, k_cache, v_cache, cache_lens, scale):
    _check_decode(q, k_cache, v_cache, cache_lens)
    return sdpa_decode(q, k_cache, v_cache, cache_lens.tolist(), scale)


@register_fallback("kv_cache_append", "copy")
def _kv_cache_append_fallback(k_cache, v_cache, k_new, v_new, cache_lens):
    _check_append(k_cache, v_cache, k_new, v_new, cache_lens)
    kv_cache_append_reference(k_cache, v_cache, k_new, v_new, cache_lens)


@register_fallback("decode_attention_step", "sdpa")
def _decode_attention_step_fallback(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads):
    _check_step(qkv, q_norm, k_norm, k_cache, v_cache, num_heads)
    # The parts through the dispatcher: the device's own kernel of each (its fallback where none).
    parts = (lambda x, w, e: ops.rms_norm(x, w, e)[0], ops.rotary, ops.kv_cache_append,
             lambda q, kc, vc, lens: ops.decode_attention(q, kc, vc, lens, None))
    return _step(parts, qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads)


@register_fake("decode_attention")
def _decode_attention_fake(q, k_cache, v_cache, cache_lens, scale):
    torch._check(q.dim() == 4 and k_cache.dim() == 4 and v_cache.dim() == 4,
                 lambda: "decode_attention: q must be [B, S, Hq, D] and the caches [B, Tmax, Hkv, D]")
    torch._check(k_cache.shape == v_cache.shape,
                 lambda: "decode_attention: v_cache must have the shape of k_cache")
    torch._check(k_cache.shape[0] == q.shape[0] and k_cache.shape[3] == q.shape[3],
                 lambda: "decode_attention: the caches' batch and head_dim must match q's")
    torch._check(q.shape[2] % k_cache.shape[2] == 0,
                 lambda: "decode_attention: Hq must be a multiple of Hkv")
    torch._check(q.dtype == k_cache.dtype == v_cache.dtype,
                 lambda: "decode_attention: q, k_cache and v_cache must have the same dtype")
    return q.new_empty(q.shape)


@register_fake("kv_cache_append")
def _kv_cache_append_fake(k_cache, v_cache, k_new, v_new, cache_lens):
    torch._check(k_cache.dim() == 4 and k_new.dim() == 4 and k_cache.shape == v_cache.shape,
                 lambda: "kv_cache_append: the caches must be [B, Tmax, Hkv, D], k_new [B, S, Hkv, D]")
    torch._check(k_new.shape == v_new.shape,
                 lambda: "kv_cache_append: v_new must have the shape of k_new")
    torch._check(k_new.shape[0] == k_cache.shape[0] and k_new.shape[2] == k_cache.shape[2]
                 and k_new.shape[3] == k_cache.shape[3],
                 lambda: "kv_cache_append: k_new must be [B, S, Hkv, D] as in k_cache")
    return None


@register_fake("decode_attention_step")
def _decode_attention_step_fake(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads):
    torch._check(qkv.dim() == 3 and k_cache.dim() == 4 and k_cache.shape == v_cache.shape,
                 lambda: "decode_attention_step: qkv must be [B, S, (Hq + 2 Hkv) * D], the caches [B, Tmax, Hkv, D]")
    Hkv, D = k_cache.shape[2], k_cache.shape[3]
    torch._check(qkv.shape[2] == (num_heads + 2 * Hkv) * D,
                 lambda: "decode_attention_step: qkv's last dim must be (num_heads + 2 Hkv) * D")
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], num_heads * D)


def _decode_setup_context(ctx, inputs, output):
    pass


def _decode_backward(ctx, grad_out):
    raise RuntimeError(_INFERENCE_ONLY)


torch.library.register_autograd(qualname("decode_attention"), _decode_backward,
                                setup_context=_decode_setup_context)
