"""The building blocks of the decoder: RMSNorm, SwiGLU MLP, GQA attention with RoPE."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        out_dtype = q.dtype  # what o_proj takes without a cast (the autocast dtype under autocast)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = self.ops.rotary(q, cos, sin)
        k = self.ops.rotary(k, cos, sin)
        if kv_cache is None:
            out = self.ops.attention(q, k, v, causal=True)
        else:
            kc, vc = kv_cache.k[self.layer_idx], kv_cache.v[self.layer_idx]
            self.ops.kv_cache_append(kc, vc, k.to(kc.dtype), v.to(vc.dtype), kv_cache.lens)
            out = self.ops.decode_attention(q.to(kc.dtype), kc, vc, kv_cache.lens + T)
        return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim).to(out_dtype))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: TransformerConfig, layer_idx: int, ops):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.self_attn = Attention(config, layer_idx, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.mlp = MLP(config, ops)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, kv_cache=None):
        h = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin, kv_cache), self.dropout, self.training)
        return h + F.dropout(self.mlp(self.post_attention_layernorm(h)), self.dropout, self.training)
