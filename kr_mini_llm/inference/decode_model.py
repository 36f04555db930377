"""The decoder for generation: the Transformer's math with its weights packed for decoding.

Per block: q/k/v are one stacked weight, gate/up one weight whose SwiGLU is the kernel's epilogue,
the residual adds are fused into the o/down projections, and everything between the qkv and o
projections is one op (decode_attention_step); a decode step of few rows runs the whole stack of
blocks as one op (decode_stack: each block's seven calls made in C++, one dispatch per step), a
prefill as 7 calls per block (norm, qkv, attention step, o, norm, gate/up, down). Weights are
fp32, bf16, int8 + scales or int4 + scales (see packed.py; with int4, a layer whose input size the
group size does not divide is int8 per output channel); activations and the residual stream are
fp32; the KV cache is fp32 for fp32 weights and bf16 for the others (a 16-bit cache, as llama.cpp's
default f16 one: at batch 8 reading the cache costs as much as reading int8 weights). Called like Transformer(ids, kv_cache=..., last_logits_only=...).
"""
from __future__ import annotations

import logging

import torch

from .. import ops
from ..errors import KrMiniLlmError
from ..model import KVCache, TransformerConfig
from ..ops.decode_linear import INT4_BLOCK, INT4_SCALE_DTYPE
from .huge_pages import on_huge_pages
from .packed import INT4_GROUP_SIZE, PackedLinear, bf16_prefill, check_dtype

log = logging.getLogger(__name__)

SCALES_SUFFIX = ".scales"


class ConfigMismatchError(KrMiniLlmError, ValueError):
    """The weights do not have the sizes their config says."""


class _Layer:
    __slots__ = ("norm1", "qkv", "q_norm", "k_norm", "o", "norm2", "gate_up", "down")


class DecodeModel:
    def __init__(self, config: TransformerConfig, tensors: dict[str, torch.Tensor], dtype: str = "fp32",
                 group_size: int | None = None):
        """`tensors`: the Transformer's state_dict names. Floating weights are packed into `dtype`
        (int8 with `group_size`, None = per output channel; int4 with `group_size`, a multiple of
        32, None = 32, and int8 per output channel for a layer whose input size it does not
        divide); int8 and int4 (uint8) ones, with their NAME.scales, are taken as they are."""
        self.config = config
        self.dtype = check_dtype(dtype)
        if dtype == "int4" and group_size is not None and (group_size <= 0 or group_size % INT4_BLOCK):
            raise ValueError(f"int4 group_size must be a multiple of {INT4_BLOCK}, the packed block, got {group_size}")
        self.int8_layers: list[str] = []  # int4 models: the layers kept in int8
        if dtype != "fp32":
            bf16_prefill()  # decided (and, where bf16 does not pay, logged) once, at load
        c = config
        D = c.resolved_head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, D
        self.eps = c.rms_norm_eps

        def vec(name, n):
            return _take(tensors, name, (n,)).float().contiguous()

        def lin(name, out, inp):
            stored = tensors.get(name + ".weight")
            if stored is not None and stored.dtype in (torch.int8, torch.uint8):
                return quantized(name, out, inp, "int4" if stored.dtype == torch.uint8 else "int8")
            w = _take(tensors, name + ".weight", (out, inp))
            if dtype == "int4" and inp % (group_size or INT4_GROUP_SIZE):
                self.int8_layers.append(name)
                return PackedLinear.from_float(w, "int8")
            try:
                return PackedLinear.from_float(w, dtype, group_size)
            except ValueError as e:  # a group size that does not fit: name the layer
                raise ValueError(f"{name}: {e}") from None

        def quantized(name, out, inp, kind):
            # int4: uint8 [out, inp / 2], groups a multiple of 32 inputs
            if kind == "int4" and inp % INT4_BLOCK:
                raise ConfigMismatchError(f"{name}.weight is int4 but the config's in_features {inp} is not a "
                                          f"multiple of {INT4_BLOCK}")
            w = _take(tensors, name + ".weight", (out, inp // 2 if kind == "int4" else inp))
            s = tensors.get(name + SCALES_SUFFIX)
            if s is None:
                raise ConfigMismatchError(f"{name}.weight is {kind} but {name}{SCALES_SUFFIX} is missing")
            if (s.dim() != 2 or s.shape[0] != out or s.shape[1] < 1 or inp % s.shape[1]
                    or (kind == "int4" and (inp // s.shape[1]) % INT4_BLOCK)):
                unit = f"groups of a multiple of {INT4_BLOCK} inputs" if kind == "int4" else "groups"
                raise ConfigMismatchError(f"{name}{SCALES_SUFFIX} must be [{out}, {unit} dividing {inp}], "
                                          f"got {list(s.shape)}")
            if dtype != kind and not (dtype == "int4" and kind == "int8"):  # int4 models keep some layers int8
                raise ConfigMismatchError(f"{name} holds {kind} weights; load them with dtype='{kind}'")
            if dtype == "int4" and kind == "int8":
                self.int8_layers.append(name)
            # int4 scales are float16 (Q4_0's); files written before they were hold float32 ones, rounded here
            scale_dtype = INT4_SCALE_DTYPE if kind == "int4" else torch.float32
            scales = s.to(scale_dtype)
            if kind == "int4" and not bool(torch.isfinite(scales).all()):
                raise ConfigMismatchError(f"{name}{SCALES_SUFFIX} holds scales that are not finite in float16 (inf, "
                                          "NaN, or past float16's range): these int4 weights cannot run; quantize "
                                          "the checkpoint again")
            return PackedLinear(w, scales)

        C, Hq, Hkv, I = c.hidden_size, c.num_heads * D, c.num_kv_heads * D, c.intermediate_size
        self.layers = []
        for i in range(c.num_layers):
            p = f"layers.{i}."
            L = _Layer()
            L.norm1 = vec(p + "input_layernorm.weight", C)
            L.qkv = PackedLinear.cat([lin(p + "self_attn.q_proj", Hq, C), lin(p + "self_attn.k_proj", Hkv, C),
                                      lin(p + "self_attn.v_proj", Hkv, C)])
            L.q_norm = vec(p + "self_attn.q_norm.weight", D) if c.qk_norm else None
            L.k_norm = vec(p + "self_attn.k_norm.weight", D) if c.qk_norm else None
            L.o = lin(p + "self_attn.o_proj", C, Hq)
            L.norm2 = vec(p + "post_attention_layernorm.weight", C)
            L.gate_up = PackedLinear.cat([lin(p + "mlp.gate_proj", I, C), lin(p + "mlp.up_proj", I, C)])
            L.down = lin(p + "mlp.down_proj", C, I)
            self.layers.append(L)
        # Rows up to which a block's projections all run on the decode kernels (decode_stack).
        self.block_max_rows = min(p.decode_max_rows for L in self.layers
                                  for p in (L.qkv, L.o, L.gate_up, L.down)) if self.layers else 0
        self.norm = vec("norm.weight", C)
        self.embed = lin("embed_tokens", c.vocab_size, C)
        self.lm_head = self.embed if c.tie_word_embeddings else lin("lm_head", c.vocab_size, C)
        # Rows up to which a step runs as one op (decode_forward): the blocks' and the head's decode kernels.
        self.step_max_rows = min(self.block_max_rows, self.lm_head.decode_max_rows) if self.layers else 0
        self._to_huge_pages()
        # decode_stack's per-layer lists before and after the caches, built once: the weights do not change
        self._stack_head = ([L.norm1 for L in self.layers], [L.qkv.weight for L in self.layers],
                            [L.qkv.scales for L in self.layers], [L.q_norm for L in self.layers],
                            [L.k_norm for L in self.layers])
        self._stack_tail = ([L.o.weight for L in self.layers], [L.o.scales for L in self.layers],
                            [L.norm2 for L in self.layers], [L.gate_up.weight for L in self.layers],
                            [L.gate_up.scales for L in self.layers], [L.down.weight for L in self.layers],
                            [L.down.scales for L in self.layers])
        if self.int8_layers:
            G = group_size or INT4_GROUP_SIZE
            log.warning(f"int4: {len(self.int8_layers)} layers whose input size is not a multiple of the group "
                        f"size stay int8 per output channel (e.g. {self.int8_layers[0]}; group size {G})")
        self.rope_cos, self.rope_sin = ops.rope_tables(D, c.max_seq_length, c.rope_theta, c.resolved_rope_scaling)
        self.cache_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        self.device = torch.device("cpu")

    def _to_huge_pages(self) -> None:
        """Every weight copied into one mapping of 2 MiB pages, layer by layer, where the OS grants them
        (huge_pages.py: far fewer TLB misses as a decode step streams them)."""
        linears = [self.embed, self.lm_head]  # the tied embedding and head are one PackedLinear
        owners = []  # (object, attribute) of each weight
        for L in self.layers:
            owners += [(L, "norm1"), (L, "q_norm"), (L, "k_norm"), (L, "norm2")]
            for p in (L.qkv, L.o, L.gate_up, L.down):
                owners += [(p, "weight"), (p, "scales")]
        owners.append((self, "norm"))
        owners += [(p, name) for p in {id(p): p for p in linears}.values() for name in ("weight", "scales")]
        tensors = [getattr(o, name) for o, name in owners]
        copies = on_huge_pages(tensors)
        if copies is not None:
            for (o, name), t in zip(owners, copies):
                setattr(o, name, t)

    @classmethod
    def from_transformer(cls, model, dtype: str = "fp32", group_size: int | None = None) -> "DecodeModel":
        return cls(model.config, dict(model.state_dict()), dtype, group_size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The packed weights under the Transformer's names (int8: NAME.weight + NAME.scales), q/k/v and
        gate/up split again, so a saved file reads like a checkpoint."""
        c, D = self.config, self.head_dim
        out: dict[str, torch.Tensor] = {}

        def put(name, packed: PackedLinear, lo=0, hi=None):
            out[name + ".weight"] = packed.weight[lo:hi].contiguous()
            if packed.scales is not None:
                out[name + SCALES_SUFFIX] = packed.scales[lo:hi].contiguous()

        Hq, Hkv, I = c.num_heads * D, c.num_kv_heads * D, c.intermediate_size
        for i, L in enumerate(self.layers):
            p = f"layers.{i}."
            out[p + "input_layernorm.weight"] = L.norm1
            put(p + "self_attn.q_proj", L.qkv, 0, Hq)
            put(p + "self_attn.k_proj", L.qkv, Hq, Hq + Hkv)
            put(p + "self_attn.v_proj", L.qkv, Hq + Hkv, None)
            if L.q_norm is not None:
                out[p + "self_attn.q_norm.weight"] = L.q_norm
                out[p + "self_attn.k_norm.weight"] = L.k_norm
            put(p + "self_attn.o_proj", L.o)
            out[p + "post_attention_layernorm.weight"] = L.norm2
            put(p + "mlp.gate_proj", L.gate_up, 0, I)
            put(p + "mlp.up_proj", L.gate_up, I, None)
            put(p + "mlp.down_proj", L.down)
        out["norm.weight"] = self.norm
        put("embed_tokens", self.embed)
        if not c.tie_word_embeddings:
            put("lm_head", self.lm_head)
        return out

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.state_dict().values())

    # Generator compatibility: an inference model is always in eval mode and on the CPU.
    def eval(self) -> "DecodeModel":
        return self

    def to(self, device) -> "DecodeModel":
        if torch.device(device).type != "cpu":
            raise ValueError(f"packed {self.dtype} inference weights run on the CPU; got device {device}")
        return self

    # -- forward ------------------------------------------------------------------------------
    def _room_error(self, kv_cache: KVCache, T: int) -> ValueError | None:
        """The error when T more tokens do not fit the cache or the model's positions, else None."""
        end = int(kv_cache.lens.max()) + T
        if end > kv_cache.max_length:
            try:
                kv_cache.check_room(T)  # the cache's own message
            except ValueError as e:
                return e
        if end > self.rope_cos.shape[0]:
            return ValueError(f"position {end} exceeds max_seq_length {self.rope_cos.shape[0]} of this model")
        return None

    def __call__(self, input_ids: torch.Tensor, labels=None, *, kv_cache: KVCache | None = None,
                 last_logits_only: bool = False, logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """As Transformer.forward without labels: logits of the new tokens (all, the last, or at
        `logits_at` [B], one position per row of a right-padded batch)."""
        if labels is not None:
            raise ValueError("packed inference weights compute logits only; train or evaluate the loss "
                             "with the Transformer (nn.Linear weights)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if kv_cache is None:  # a whole sequence at once: a cache just for it
            kv_cache = KVCache.for_model(self.config, B, T, dtype=self.cache_dtype)
        if 0 < B * T <= self.step_max_rows and logits_at is None:
            try:  # the whole step in one call (ops.decode_forward): it checks all before it writes
                return ops.decode_forward(input_ids, self.embed.weight, self.embed.scales, self.rope_cos,
                                          self.rope_sin, *self._stack_head, kv_cache.k, kv_cache.v, kv_cache.lens,
                                          self.num_heads, *self._stack_tail, self.norm, self.lm_head.weight,
                                          self.lm_head.scales, self.eps, last_logits_only)
            except ValueError:
                room = self._room_error(kv_cache, T)  # the cache's and the model's own words for a full cache
                if room is None:
                    raise
                raise room from None
        room = self._room_error(kv_cache, T)
        if room is not None:
            raise room
        pos = kv_cache.lens.unsqueeze(1) + torch.arange(T)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        x = self.embed.rows(input_ids)
        if self.layers and B * T <= self.block_max_rows:  # every projection on its decode kernel: one call
            x = ops.decode_stack(x, *self._stack_head, cos, sin, kv_cache.k, kv_cache.v, kv_cache.lens,
                                 self.num_heads, *self._stack_tail, self.eps)
        for i, L in enumerate(self.layers if B * T > self.block_max_rows else ()):
            qkv = L.qkv(ops.rms_norm(x, L.norm1, self.eps))
            # qk-norm, RoPE, cache append (in the cache's dtype) and attention: one call
            att = ops.decode_attention_step(qkv, L.q_norm, L.k_norm, self.eps, cos, sin, kv_cache.k[i],
                                            kv_cache.v[i], kv_cache.lens, self.num_heads)
            x = L.o(att, residual=x)
            x = L.down(L.gate_up.swiglu(ops.rms_norm(x, L.norm2, self.eps)), residual=x)
        kv_cache.advance(T)
        if logits_at is not None:
            x = x[torch.arange(B), logits_at.to(x.device)].unsqueeze(1)
        elif last_logits_only:
            x = x[:, -1:]
        return self.lm_head(ops.rms_norm(x, self.norm, self.eps))


def _take(tensors: dict, name: str, shape: tuple) -> torch.Tensor:
    t = tensors.get(name)
    if t is None:
        raise ConfigMismatchError(f"weights have no {name!r}: they do not belong to this config")
    if tuple(t.shape) != tuple(shape):
        raise ConfigMismatchError(f"{name} is {list(t.shape)} but the config needs {list(shape)}: the weights "
                                  "and model_config.yaml do not belong together")
    return t
