"""Attention for devices without a native kernel, in O(T) memory: the output through PyTorch's
scaled_dot_product_attention (flash / memory-efficient on CUDA, the fused kernel on MPS, flash on
the CPU), the log-sum-exp and the backward in blocks of query rows, so that no [T, T] score
tensor ever exists. The backward is a flash-style pass in plain matmuls: PyTorch has no fused
SDPA backward on MPS (its training path materializes the attention matrix), and the op's saved
log-sum-exp makes the recompute one matmul per block.

Layout: q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], query head h reads kv head h // G (G = Hq / Hkv).
Within a block of c query rows the G heads of one kv head are stacked as G * c rows, so each
block is one batched matmul per kv head and K/V are never repeated.
"""
import math

import torch
import torch.nn.functional as F

# enable_gqa came with torch 2.5; before it the G query heads of a kv head go one SDPA call each.
SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")
# A block's scores hold half as many elements as q (two such blocks live at once in the backward,
# so the blocks add about q's size: O(T) memory), at least BLOCK_ELEMENTS, and at least 16 rows.
# Fewer, larger blocks launch fewer kernels; larger ones would pass SDPA's own peak (a block
# holds rows x Tk scores where SDPA's fused kernels hold none).
BLOCK_ELEMENTS = 1 << 18
_MIN_ROWS = 16


def _sdpa_heads(q, k, v, **kw):
    """F.scaled_dot_product_attention on [B, H, T, D] tensors, Hq a multiple of Hkv, no autograd
    (the ops have their own backward, and on MPS only the no-grad SDPA takes the fused kernel)."""
    Hq, Hkv = q.shape[1], k.shape[1]
    if kw.get("scale") is not None and kw["scale"] < 0:  # torch 2.13's CPU flash kernel gives NaN for these
        q, kw = q * kw["scale"], {**kw, "scale": 1.0}
    with torch.no_grad():
        if Hq == Hkv or SDPA_HAS_GQA:
            o = F.scaled_dot_product_attention(q, k, v, **kw, **({"enable_gqa": True} if Hq != Hkv else {}))
        else:
            G = Hq // Hkv   # query heads g, G + g, 2G + g, ... read kv heads 0, 1, 2, ...
            o = torch.stack([F.scaled_dot_product_attention(q[:, g::G], k, v, **kw) for g in range(G)],
                            dim=2).reshape(q.shape)
        if k.shape[2] == 0:
            return o
        # A query with an inf or NaN has no finite score, and the op's softmax gives NaN; SDPA's fused
        # kernels take a row without one as fully masked and give 0, hiding the NaN.
        return o.masked_fill_(~torch.isfinite(q).all(-1, keepdim=True), float("nan"))


def sdpa(q, k, v, causal, scale):
    """attention's out [B, Tq, Hq, D] in q's dtype through F.scaled_dot_product_attention."""
    o = _sdpa_heads(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=scale)
    return o.transpose(1, 2).contiguous()


def block_rows(B, Hq, Tq, Tk, D):
    """Query rows per block: B * Hq * rows * Tk scores within max(BLOCK_ELEMENTS, half q's size)."""
    budget = max(BLOCK_ELEMENTS, B * Tq * Hq * D // 2)
    return max(_MIN_ROWS, budget // max(1, B * Hq * Tk))


class _Blocks:
    """The shared pieces of the block passes: K/V in the accumulation dtype as [B, Hkv, Tk, D],
    and per block its query rows stacked [B, Hkv, G * c, D] and its masked scaled scores."""

    def __init__(self, q, k, v, causal, scale, acc):
        self.B, self.Tq, self.Hq, self.D = q.shape
        self.Tk, self.Hkv = k.shape[1], k.shape[2]
        self.G = self.Hq // self.Hkv
        self.causal, self.acc = causal, acc
        self.scale = 1.0 / math.sqrt(self.D) if scale is None else scale
        self.k = k.to(acc).transpose(1, 2).contiguous()
        self.v = v.to(acc).transpose(1, 2).contiguous()
        self.rows = block_rows(self.B, self.Hq, self.Tq, self.Tk, self.D)

    def ranges(self):
        """(first row, end row, keys the block sees): causal blocks skip the keys after their last row."""
        for i0 in range(0, self.Tq, self.rows):
            i1 = min(i0 + self.rows, self.Tq)
            yield i0, i1, (i1 if self.causal else self.Tk)

    def stack(self, x, i0, i1):
        """Rows i0..i1 of x [B, Tq, Hq, D'] as [B, Hkv, G * c, D'] in the accumulation dtype."""
        c = i1 - i0
        return (x[:, i0:i1].to(self.acc).reshape(self.B, c, self.Hkv, self.G, -1)
                .permute(0, 2, 3, 1, 4).reshape(self.B, self.Hkv, self.G * c, -1))

    def unstack(self, x, i0, i1):
        """[B, Hkv, G * c, D'] -> [B, c, Hq, D']."""
        c = i1 - i0
        return x.reshape(self.B, self.Hkv, self.G, c, -1).permute(0, 3, 1, 2, 4).reshape(self.B, c, self.Hq, -1)

    def queries(self, q, i0, i1):
        """Rows i0..i1 of q stacked and times the scale (so the scores need no pass of their own)."""
        return self.stack(q, i0, i1) * self.scale  # not in place: stack may be a view of q

    def scores(self, qs, i0, i1, kend):
        """Scores [B, Hkv, G * c, kend] of scaled stacked rows qs; if causal, -inf above the diagonal,
        which lies in the block's last c keys (the keys before i0 are all seen)."""
        s = torch.matmul(qs, self.k[:, :, :kend].transpose(-1, -2))
        if self.causal:
            mask = torch.arange(i0, kend, device=s.device) > torch.arange(i0, i1, device=s.device).unsqueeze(1)
            s.view(self.B, self.Hkv, self.G, i1 - i0, kend)[..., i0:].masked_fill_(mask, float("-inf"))
        return s

    def lse_rows(self, lse, i0, i1):
        """lse [B, Hq, Tq] rows i0..i1 as [B, Hkv, G * c, 1]."""
        return lse[:, :, i0:i1].reshape(self.B, self.Hkv, self.G * (i1 - i0), 1)


def blocked_lse(q, k, v, causal, scale, acc):
    """logsumexp of the scaled (masked) scores, [B, Hq, Tq] in acc, one block of rows at a time."""
    blk = _Blocks(q, k, v, causal, scale, acc)
    lse = torch.empty(blk.B, blk.Hkv, blk.G, blk.Tq, dtype=acc, device=q.device)
    for i0, i1, kend in blk.ranges():
        s = blk.scores(blk.queries(q, i0, i1), i0, i1, kend)
        lse[:, :, :, i0:i1] = torch.logsumexp(s, dim=-1).reshape(blk.B, blk.Hkv, blk.G, i1 - i0)
    return lse.reshape(blk.B, blk.Hq, blk.Tq)


def blocked_backward(grad_out, q, k, v, lse, causal, scale):
    """(dq, dk, dv) from the saved lse, one block of query rows at a time (flash-style:
    P = exp(S - lse), dV += P^T dO, dS = P * (dO V^T - rowsum(dO * P V)), dQ = dS K, dK += dS^T Q).
    A block holds whole rows of keys, so O = P V is recomputed exactly rather than read rounded."""
    acc = lse.dtype
    blk = _Blocks(q, k, v, causal, scale, acc)
    dq = torch.empty(blk.B, blk.Tq, blk.Hq, blk.D, dtype=acc, device=q.device)
    dk = torch.zeros_like(blk.k)
    dv = torch.zeros_like(blk.v)
    for i0, i1, kend in blk.ranges():
        qs, dos = blk.queries(q, i0, i1), blk.stack(grad_out, i0, i1)
        p = blk.scores(qs, i0, i1, kend).sub_(blk.lse_rows(lse, i0, i1)).exp_()
        dv[:, :, :kend] += torch.matmul(p.transpose(-1, -2), dos)            # sums the G heads too
        # rowsum(dO * O) with O = P V recomputed in acc: the saved out is rounded to q's dtype, and
        # in bf16 that rounding, times a sharp softmax, is larger than dS itself.
        di = (dos * torch.matmul(p, blk.v[:, :, :kend])).sum(-1, keepdim=True)  # [B, Hkv, G * c, 1]
        ds = torch.matmul(dos, blk.v[:, :, :kend].transpose(-1, -2)).sub_(di).mul_(p)  # dS / scale
        del p
        dq[:, i0:i1] = blk.unstack(torch.matmul(ds, blk.k[:, :, :kend]).mul_(blk.scale), i0, i1)
        dk[:, :, :kend] += torch.matmul(ds.transpose(-1, -2), qs)            # qs holds the scale
    return (dq.to(q.dtype), dk.transpose(1, 2).to(k.dtype).contiguous(),
            dv.transpose(1, 2).to(v.dtype).contiguous())


def sdpa_decode(q, k_cache, v_cache, lens, scale):
    """decode_attention [B, S, Hq, D] through SDPA over each sequence's valid cache rows: query s
    of a sequence with L rows sees rows 0 .. L - S + s (a lower-right causal mask, none when S = 1).
    Sequences of the same length share one call."""
    B, S, Hq, D = q.shape
    out = q.new_empty(B, S, Hq, D)
    by_len = {}
    for b, L in enumerate(lens):
        by_len.setdefault(L, []).append(b)
    for L, rows in by_len.items():
        idx = torch.tensor(rows, device=q.device) if len(rows) < B else slice(None)
        mask = None
        if S > 1:
            mask = torch.arange(L, device=q.device) <= torch.arange(L - S, L, device=q.device).unsqueeze(1)
        o = _sdpa_heads(q[idx].transpose(1, 2), k_cache[idx, :L].transpose(1, 2),
                        v_cache[idx, :L].transpose(1, 2), attn_mask=mask, scale=scale)
        out[idx] = o.transpose(1, 2)
    return out
