"""The Llama/Qwen3-style decoder, on the fused ops (or their references).

Weight names are HF LlamaForCausalLM/Qwen3ForCausalLM's without the leading "model.", so
checkpoints convert both ways by renaming alone (see hf.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .. import ops as _ops
from .config import TransformerConfig
from .hf import load_hf, save_hf
from .kv_cache import KVCache
from .layers import Block, RMSNorm, autocast_input
from .op_set import op_set


class Transformer(nn.Module):
    """Decoder-only transformer.

    model(input_ids)                 -> logits [B, T, vocab]
    model(input_ids, labels)         -> mean cross-entropy loss, through the fused LM-head loss,
                                        so the [B, T, vocab] logits never exist. labels[b, t] is
                                        the token that follows input_ids[b, t] (already shifted);
                                        ignore_index positions are skipped.
    model(input_ids, kv_cache=cache) -> logits of the new tokens; their K/V go into the cache.
    last_logits_only / logits_at=[B] positions: logits of the last / of one given position per row.
    """

    def __init__(self, config: TransformerConfig, ops_impl: str = "fused"):
        super().__init__()
        config.validate()
        self.config = config.replace()  # own copy: later edits of the caller's config change nothing
        self.ops = op_set(ops_impl)
        C, V = config.hidden_size, config.vocab_size
        self.embed_tokens = nn.Embedding(V, C)
        self.layers = nn.ModuleList(Block(config, i, self.ops) for i in range(config.num_layers))
        self.norm = RMSNorm(C, config.rms_norm_eps, self.ops)
        self.lm_head = nn.Linear(C, V, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False
        self.dropout = config.dropout  # the rate in use: set_dropout changes it, not the config
        cos, sin = _ops.rope_tables(config.resolved_head_dim, config.max_seq_length, config.rope_theta,
                                    config.resolved_rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def set_dropout(self, p: float) -> None:
        """The dropout rate of the embedding and every block from now on (train.dropout_after_epochs
        turns the config's rate on part way through a run); the config, and so a saved model, keep
        theirs."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.dropout = p
        for layer in self.layers:
            layer.dropout = p

    # -- set-up --------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """std = initializer_range; residual projections scaled by 1/sqrt(2 * num_layers)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.num_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_gradient_checkpointing(self, enabled: bool = True) -> "Transformer":
        self.gradient_checkpointing = enabled
        return self

    def use_ops(self, impl: str) -> "Transformer":
        """Switch every layer to the 'fused' kernels or the 'reference' PyTorch ops."""
        new = op_set(impl)
        self.ops = new
        for m in self.modules():
            if hasattr(m, "ops") and m is not self:
                m.ops = new
        return self

    @classmethod
    def from_hf(cls, path, ops_impl: str = "fused") -> "Transformer":
        """Loads a HF LlamaForCausalLM / Qwen3ForCausalLM directory (config.json + safetensors)."""
        return load_hf(path, cls, ops_impl)

    def save_hf(self, path) -> None:
        """Writes a directory that transformers.AutoModelForCausalLM.from_pretrained loads."""
        save_hf(self, path)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward -------------------------------------------------------------------------
    def _rope(self, T: int, device, kv_cache: KVCache | None):
        if kv_cache is None:
            if T > self.rope_cos.shape[0]:
                raise ValueError(f"sequence length {T} exceeds max_seq_length {self.rope_cos.shape[0]}; "
                                 "use shorter inputs or a config with a larger max_seq_length")
            return self.rope_cos[:T], self.rope_sin[:T]
        kv_cache.check_room(T)
        if int(kv_cache.lens.max()) + T > self.rope_cos.shape[0]:
            raise ValueError(f"position {int(kv_cache.lens.max()) + T} exceeds max_seq_length "
                             f"{self.rope_cos.shape[0]} of this model")
        pos = kv_cache.lens.to(device).unsqueeze(1) + torch.arange(T, device=device)  # [B, T]
        return self.rope_cos[pos], self.rope_sin[pos]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                kv_cache: KVCache | None = None, ignore_index: int = -100,
                last_logits_only: bool = False, logits_at: torch.Tensor | None = None):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        cos, sin = self._rope(T, input_ids.device, kv_cache)
        x = self.ops.dropout(self.embed_tokens(input_ids), self.dropout, self.training)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and kv_cache is None:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        h = self.norm(x)
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(labels.shape)}")
            # Under autocast only h is cast: the op takes the fp32 weight, casts it once inside and
            # returns its gradient in fp32 (no bf16 round trip of a [V, C] gradient).
            return self.ops.linear_cross_entropy(autocast_input(h).reshape(B * T, -1), self.lm_head.weight,
                                                 labels.reshape(-1), ignore_index=ignore_index)
        if logits_at is not None:  # [B] one position per row (right-padded batches): logits [B, 1, V]
            h = h[torch.arange(B, device=h.device), logits_at.to(h.device)].unsqueeze(1)
        elif last_logits_only:
            h = h[:, -1:]
        return self.lm_head(h)
