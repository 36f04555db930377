"""The building blocks of the decoder: RMSNorm, SwiGLU MLP, GQA attention with RoPE."""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import TransformerConfig


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on: the one cast copy that every projection of x
    shares (autocast would cast x again for each linear layer, forward and backward)."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


class Linear(nn.Linear):
    """A bias-free nn.Linear (same parameter, same state_dict) whose product is ops.linear: on the
    CPU in fp32, each GEMM on the library measured faster for its shape (ops/linear.py)."""

    def __init__(self, in_features: int, out_features: int, ops):
        super().__init__(in_features, out_features, bias=False)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight)


def fused_weight(*layers: nn.Module) -> torch.Tensor | None:
    """The weights of `layers` stacked along the output dim, when every one is the model's plain
    Linear (not LoRA's or another wrapper, whose own forward must run); else None. One GEMM over
    the stacked weight replaces one per layer: fewer and wider GEMMs (k and v alone are narrow),
    the backward's dx is one GEMM instead of several summed, each layer's gradient a row block of one dW."""
    if all(type(layer) is Linear for layer in layers):
        return torch.cat([layer.weight for layer in layers])
    return None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TransformerConfig, ops):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(C, I, ops)
        self.up_proj = Linear(C, I, ops)
        self.down_proj = Linear(I, C, ops)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gate and up stay two GEMMs (unlike q/k/v): each is wide enough to run at the GEMM's best
        # already, and a fused one measured no faster while its backward adds a cat of [N, 2I].
        x = autocast_input(x)
        return self.down_proj(self.ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class Attention(nn.Module):
    """Grouped-query attention on [B, T, H, D] with RoPE and optional QK-norm (Qwen3)."""

    def __init__(self, config: TransformerConfig, layer_idx: int, ops):
        super().__init__()
        C, D = config.hidden_size, config.resolved_head_dim
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, D
        self.q_proj = Linear(C, self.num_heads * D, ops)
        self.k_proj = Linear(C, self.num_kv_heads * D, ops)
        self.v_proj = Linear(C, self.num_kv_heads * D, ops)
        self.o_proj = Linear(self.num_heads * D, C, ops)
        if config.qk_norm:
            self.q_norm = RMSNorm(D, config.rms_norm_eps, ops)
            self.k_norm = RMSNorm(D, config.rms_norm_eps, ops)
        else:
            self.q_norm = self.k_norm = None
        self.ops = ops

    def forward(self, x, cos, sin, kv_cache=None):
        B, T, _ = x.shape
        x = autocast_input(x)
        q, k, v = self._rotated_qkv(x, cos, sin)
        out_dtype = v.dtype  # what o_proj takes without a cast (the autocast dtype under autocast)
        if kv_cache is None:
            out = self.ops.attention(q, k, v, causal=True)
        else:
            kc, vc = kv_cache.k[self.layer_idx], kv_cache.v[self.layer_idx]
            self.ops.kv_cache_append(kc, vc, k.to(kc.dtype), v.to(vc.dtype), kv_cache.lens)
            out = self.ops.decode_attention(q.to(kc.dtype), kc, vc, kv_cache.lens + T)
        return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim).to(out_dtype))

    def _rotated_qkv(self, x, cos, sin):
        """q [B, T, Hq, D] and k [B, T, Hkv, D] with QK-norm (if any) and RoPE, and v [B, T, Hkv, D]:
        strided views of one fused projection where the ops read them in place."""
        weight = fused_weight(self.q_proj, self.k_proj, self.v_proj)
        if weight is not None and self.q_norm is None:
            return self._fused_rotated_qkv(x, weight, cos, sin)
        q, k, v = self._qkv(x, weight)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.ops.rotary(q, cos, sin), self.ops.rotary(k, cos, sin), v

    def _qkv(self, x, weight):
        """q, k, v before RoPE: from the fused weight when given, else each projection on its own."""
        B, T, _ = x.shape
        Hq, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if weight is None:
            return (self.q_proj(x).view(B, T, Hq, D), self.k_proj(x).view(B, T, Hkv, D),
                    self.v_proj(x).view(B, T, Hkv, D))
        # split, not slicing: the backward joins the three gradients with one cat.
        return self.ops.linear(x, weight).view(B, T, Hq + 2 * Hkv, D).split((Hq, Hkv, Hkv), dim=2)

    def _fused_rotated_qkv(self, x, weight, cos, sin):
        B, T, _ = x.shape
        Hq, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qk, v = self.ops.linear(x, weight).view(B, T, Hq + 2 * Hkv, D).split((Hq + Hkv, Hkv), dim=2)
        # q and k sit side by side as the heads of one tensor: one RoPE call rotates both.
        q, k = self.ops.rotary(qk, cos, sin).split((Hq, Hkv), dim=2)
        # v copied out: attention saves it for the backward, and a view would keep the whole
        # projection (q and k unrotated too) alive until then.
        return q, k, v.contiguous()


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: TransformerConfig, layer_idx: int, ops):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.self_attn = Attention(config, layer_idx, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.mlp = MLP(config, ops)
        self.dropout = config.dropout
        self.ops = ops

    def forward(self, x, cos, sin, kv_cache=None):
        drop = self.ops.dropout
        h = x + drop(self.self_attn(self.input_layernorm(x), cos, sin, kv_cache), self.dropout, self.training)
        return h + drop(self.mlp(self.post_attention_layernorm(h)), self.dropout, self.training)
