"""A preallocated KV cache for generation: [B, Tmax, Hkv, D] per layer plus per-sequence lengths."""
from __future__ import annotations

import torch

from ..ops import new_cache


class KVCache:
    """Keys and values of every layer for a batch of sequences of different lengths.

    `lens[b]` is how many positions of sequence b are filled. A forward step of S tokens appends
    their K/V at rows lens[b] .. lens[b]+S-1 in every layer; `advance(S)` then moves lens on.
    """

    def __init__(self, num_layers: int, batch_size: int, max_length: int, num_kv_heads: int,
                 head_dim: int, dtype=torch.float32, device="cpu"):
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(f"KVCache needs batch_size > 0 and max_length > 0, got {batch_size}, {max_length}")
        # head-major: each head's rows side by side, one stream per head for the attention kernels
        self.k = [new_cache(batch_size, max_length, num_kv_heads, head_dim, dtype, device) for _ in range(num_layers)]
        self.v = [new_cache(batch_size, max_length, num_kv_heads, head_dim, dtype, device) for _ in range(num_layers)]
        self.lens = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.max_length = max_length

    @classmethod
    def for_model(cls, config, batch_size: int, max_length: int | None = None, dtype=torch.float32,
                  device="cpu") -> "KVCache":
        max_length = max_length or config.max_seq_length
        return cls(config.num_layers, batch_size, max_length, config.num_kv_heads,
                   config.resolved_head_dim, dtype, device)

    def row(self, b: int) -> "KVCache":
        """A view of sequence b alone: writes through it land in this cache."""
        view = KVCache.__new__(KVCache)
        view.k = [k[b:b + 1] for k in self.k]
        view.v = [v[b:b + 1] for v in self.v]
        view.lens = self.lens[b:b + 1]
        view.max_length = self.max_length
        return view

    def rows(self, start: int, stop: int) -> "KVCache":
        """A view of sequences start .. stop-1 (writes land in this cache): a server decodes its busy
        rows, or prefills new ones, without touching the rest."""
        view = KVCache.__new__(KVCache)
        view.k = [k[start:stop] for k in self.k]
        view.v = [v[start:stop] for v in self.v]
        view.lens = self.lens[start:stop]
        view.max_length = self.max_length
        return view

    def move_row(self, src: int, dst: int) -> None:
        """Copies sequence src (its filled positions and length) into row dst, e.g. to keep busy rows first."""
        n = int(self.lens[src])
        for k, v in zip(self.k, self.v):
            k[dst, :n] = k[src, :n]
            v[dst, :n] = v[src, :n]
        self.lens[dst] = n

    @property
    def batch_size(self) -> int:
        return self.lens.shape[0]

    def check_room(self, new_tokens: int) -> None:
        longest = int(self.lens.max()) if self.lens.numel() else 0
        if longest + new_tokens > self.max_length:
            raise ValueError(
                f"KV cache is full: {longest} cached + {new_tokens} new tokens > max_length "
                f"{self.max_length}. Use a larger cache (max_length) or a shorter prompt/generation.")

    def advance(self, new_tokens: int) -> None:
        self.lens += new_tokens

    def truncate(self, length: int) -> None:
        """Shortens every sequence to at most `length` positions (speculative decoding drops the rows
        of rejected draft tokens so). Nothing is cleared: rows past a sequence's length are never
        read, and the next step overwrites them."""
        if length < 0:
            raise ValueError(f"KVCache.truncate needs a length >= 0, got {length}")
        self.lens.clamp_(max=length)

    def reset(self) -> None:
        self.lens.zero_()
