"""A model's whole decode step in one call: token ids [B, S] in, logits out.

    decode_forward(ids, embed_weight, embed_scales, rope_cos, rope_sin, <decode_stack's per-layer lists,
                   caches, cache_lens, num_heads>, norm, head_weight, head_scales, eps, last_only)

is, with P = rope_cos.shape[0] positions and pos[b, s] = cache_lens[b] + s:

    x = embedding_rows(ids, embed_weight, embed_scales)              # float32 [B, S, C]
    x = decode_stack(x, ..., rope_cos[pos], rope_sin[pos], k_cache, v_cache, cache_lens, ...)
    cache_lens += S
    logits = decode_linear(rms_norm(x[:, -1:] if last_only else x, norm), head_weight, head_scales)

A decode step streams every weight of the model, which evicts the interpreter and dispatcher from
the CPU's caches: the tiny ops around decode_stack then cost 30-90 us each (6% of model_small's int8
step on a 2-core Zen 4). The CPU kernel runs them as C++ (the parts' own kernels, so the same bits)
and checks every argument before the first cache row is written. Inference-only.
"""
import torch

from ._library import ops, register_fake, register_fallback
from .decode_block import _check_stack, decode_stack_reference
from .decode_linear import _no_grad_check, check_decode_weight, decode_linear_reference, embedding_rows
from .rms_norm import rms_norm_reference

OP = "decode_forward"
# The op's arguments in order: decode_stack's, with ids, the embedding and the rope tables in place of x,
# cos and sin, and the final norm and head after them.
ARGS = ("ids", "embed_weight", "embed_scales", "rope_cos", "rope_sin", "norm1", "qkv_weight", "qkv_scales",
        "q_norm", "k_norm", "k_cache", "v_cache", "cache_lens", "num_heads", "o_weight", "o_scales", "norm2",
        "gate_up_weight", "gate_up_scales", "down_weight", "down_scales", "norm", "head_weight", "head_scales",
        "eps", "last_only")
# decode_stack's arguments after x, cos and sin, as this op names them.
_STACK_REST = ("norm1", "qkv_weight", "qkv_scales", "q_norm", "k_norm")
_STACK_TAIL = ("k_cache", "v_cache", "cache_lens", "num_heads", "o_weight", "o_scales", "norm2", "gate_up_weight",
               "gate_up_scales", "down_weight", "down_scales", "eps")


def decode_forward(ids, embed_weight, embed_scales, rope_cos, rope_sin, norm1, qkv_weight, qkv_scales, q_norm,
                   k_norm, k_cache, v_cache, cache_lens, num_heads, o_weight, o_scales, norm2, gate_up_weight,
                   gate_up_scales, down_weight, down_scales, norm, head_weight, head_scales, eps: float,
                   last_only: bool) -> torch.Tensor:
    """Logits float32 [B, S or 1, vocab] of a decode step from ids [B, S] (see the module docstring);
    appends to the caches and advances cache_lens by S."""
    _no_grad_check(OP, embed_weight, embed_scales, norm, head_weight, head_scales,
                   *(t for lst in (norm1, qkv_weight, qkv_scales, q_norm, k_norm, o_weight, o_scales, norm2,
                                   gate_up_weight, gate_up_scales, down_weight, down_scales) for t in lst))
    return ops.decode_forward(ids, embed_weight, embed_scales, rope_cos, rope_sin, norm1, qkv_weight, qkv_scales,
                              q_norm, k_norm, k_cache, v_cache, cache_lens, num_heads, o_weight, o_scales, norm2,
                              gate_up_weight, gate_up_scales, down_weight, down_scales, norm, head_weight,
                              head_scales, eps, last_only)


def _check(args, values=True):
    """The CPU kernel's checks before anything is written, with its messages; `values`: also the ids and
    positions (not for fake tensors, which have none). Returns the arguments by name."""
    a = dict(zip(ARGS, args))
    if not a["k_cache"]:
        raise ValueError(f"{OP}: needs at least one layer, got empty lists")
    ew, hw = a["embed_weight"], a["head_weight"]
    C = ew.shape[1] * (2 if ew.dtype == torch.uint8 else 1) if ew.dim() == 2 else -1
    if C <= 0:
        raise ValueError(f"{OP}: embed_weight must be 2-D [vocab, C] (int4: uint8 [vocab, C / 2]), got "
                         f"{list(ew.shape)}")
    check_decode_weight(OP, ew, a["embed_scales"], C, "embed_weight", "embed_scales")
    check_decode_weight(OP, hw, a["head_scales"], C, "head_weight", "head_scales")
    norm = a["norm"]
    if norm.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"{OP}: norm must be float32, bfloat16, float16 or float64, got {norm.dtype}")
    if norm.dim() != 1 or norm.shape[0] != C:
        raise ValueError(f"{OP}: norm must be [C] = [{C}] (embed_weight's width), got {list(norm.shape)}")
    ids = a["ids"]
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{OP}: ids must be int64 or int32 token ids, got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{OP}: ids must be 2-D [B, S], got shape {list(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError(f"{OP}: ids must hold at least one token per sequence, got {list(ids.shape)}")
    V = ew.shape[0]
    if values and ids.numel():
        bad = ((ids < 0) | (ids >= V)).nonzero()
        if len(bad):
            b, s = bad[0].tolist()
            raise ValueError(f"{OP}: ids[{b}, {s}] = {int(ids[b, s])} is not a token of the vocabulary: ids must be "
                             f"in [0, {V}) (embed_weight's rows)")
    B, S = ids.shape
    k0 = a["k_cache"][0]
    D = k0.shape[3] if k0.dim() == 4 else 0
    if D % 2:
        raise ValueError(f"{OP}: the caches' head dim D = {D} must be even (RoPE rotates pairs)")
    for name in ("rope_cos", "rope_sin"):
        t = a[name]
        if t.dtype != torch.float32:
            raise TypeError(f"{OP}: {name} must be float32 (rope_tables for the model), got {t.dtype}")
        if t.dim() != 2 or t.shape[1] != D // 2:
            raise ValueError(f"{OP}: {name} must be [max_positions, D/2] = [P, {D // 2}] (D = k_cache.size(3)), got "
                             f"{list(t.shape)}")
    if a["rope_sin"].shape != a["rope_cos"].shape:
        raise ValueError(f"{OP}: rope_sin must have rope_cos's shape {list(a['rope_cos'].shape)}, got "
                         f"{list(a['rope_sin'].shape)}")
    if k0.shape[0] != B:
        raise ValueError(f"{OP}: the caches hold {k0.shape[0]} sequences but ids has B = {B} rows, got ids "
                         f"{list(ids.shape)}")
    lens = a["cache_lens"]
    if lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{OP}: cache_lens must be int32 or int64, got {lens.dtype}")
    if lens.dim() != 1 or lens.shape[0] != B:
        raise ValueError(f"{OP}: cache_lens must be 1-D [B] = [{B}], got {list(lens.shape)}")
    # cache_lens advances after the caches are written: whatever would stop that is refused first
    if B > 1 and lens.stride(0) == 0:
        raise ValueError(f"{OP}: cache_lens must have one element per sequence, got an expanded tensor (stride 0); "
                         "pass cache_lens.clone()")
    if lens.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(f"{OP}: cache_lens is an inference tensor and is advanced in place: call under "
                         "torch.inference_mode()")
    P = a["rope_cos"].shape[0]
    if values:
        for b, n in enumerate(lens.tolist()):
            if not (S <= P and 0 <= n <= P - S):
                raise ValueError(f"{OP}: position {n} + {S} new tokens of sequence {b} exceeds the {P} positions "
                                 "of the rope tables (the model's max_seq_length)")
    return a


def _stack_args(a, x, cos, sin):
    return (x, *(a[n] for n in _STACK_REST), cos, sin, *(a[n] for n in _STACK_TAIL))


def _forward(a, stack, rms_norm, linear):
    """decode_forward from its parts (the reference passes the references, the fallback the ops)."""
    ids, lens = a["ids"], a["cache_lens"]
    S = ids.shape[1]
    pos = lens.to(torch.int64).unsqueeze(1) + torch.arange(S, device=lens.device)
    x = embedding_rows(ids.to(torch.int64), a["embed_weight"], a["embed_scales"])
    x = stack(*_stack_args(a, x, a["rope_cos"][pos], a["rope_sin"][pos]))
    lens.add_(S)
    if a["last_only"]:
        x = x[:, -1:]
    return linear(rms_norm(x, a["norm"], a["eps"]), a["head_weight"], a["head_scales"], None)


def decode_forward_reference(*args):
    """Pure PyTorch: the references of the parts (advances cache_lens and writes the caches as the op does)."""
    a = dict(zip(ARGS, args))
    return _forward(a, decode_stack_reference, rms_norm_reference, decode_linear_reference)


def _check_layers(a, memory=True):
    """decode_stack's checks of every layer (the CPU kernel runs them before its first block writes) on
    placeholders of the x, cos and sin it would get."""
    B, S = a["ids"].shape
    half = a["k_cache"][0].shape[3] // 2
    x = a["rope_cos"].new_empty((B, S, a["norm"].shape[0]))
    _check_stack(_stack_args(a, x, x.new_empty((B, S, half)), x.new_empty((B, S, half))), memory=memory)


@register_fallback(OP, "parts")
def _decode_forward_fallback(*args):
    a = _check(args)
    _check_layers(a)  # before the first block writes (the parts check the rest)
    return _forward(a, ops.decode_stack, lambda x, w, e: ops.rms_norm(x, w, e)[0], ops.decode_linear)


@register_fake(OP)
def _decode_forward_fake(*args):
    a = _check(args, values=False)
    _check_layers(a, memory=False)
    B, S = a["ids"].shape
    return a["rope_cos"].new_empty((B, 1 if a["last_only"] else S, a["head_weight"].shape[0]))
