"""Training and evaluation windows over memory-mapped token shards.

`TokenShards(dir, split)` opens and checks a split. `RandomWindows` yields seeded, resumable
random training batches; `EvalWindows` yields sequential non-overlapping windows. Both give
(x, y) int64 tensors of shape [batch, seq_len]: a window of seq_len + 1 tokens, x = w[:-1],
y = w[1:].

RandomWindows: each epoch lays a grid of windows over every shard (start offset drawn per
epoch, step seq_len, so each token is a target once per epoch and the alignment changes
between epochs), shuffles all windows with (seed, epoch) and deals them out in global batches
of world_size * batch_size, rank r taking slice r. Ranks therefore never share a window within
an epoch, and the stream is a pure function of (seed, epoch, position): `state_dict()` is two
integers, and `load_state_dict()` continues with exactly the batches an uninterrupted run gets.
The position counts windows over all ranks, so a run may resume at another world size or
micro-batch: with the same windows per optimizer step (the trainer checks) it continues exactly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from .shards import ShardError, open_shard, read_meta

__all__ = ["TokenShards", "RandomWindows", "EvalWindows"]


def _fp(x) -> Optional[str]:
    if x is None or isinstance(x, str):
        return x
    return getattr(x, "fingerprint")


class TokenShards:
    """The shards of one split. `expected_fingerprint` (a str or a Tokenizer) must match the
    tokenizer that made them."""

    def __init__(self, directory: Union[str, os.PathLike], split: str = "train", expected_fingerprint=None):
        self.directory = Path(directory)
        self.split = split
        self.meta = read_meta(self.directory)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise ShardError(f"split {split!r} not in {str(self.directory / 'meta.json')!r} (has {sorted(splits)})")
        info = splits[split]
        self.fingerprint = self.meta["tokenizer"]["fingerprint"]
        expected = _fp(expected_fingerprint)
        if expected and expected != self.fingerprint:
            raise ShardError(f"token shards in {str(self.directory)!r} were made with tokenizer {self.fingerprint}, "
                             f"but the tokenizer in use is {expected}; re-run prepare_data.py with this tokenizer "
                             f"or use the tokenizer that made them ({self.meta['tokenizer'].get('path')})")
        self.headers, self.arrays = [], []
        for entry in info["shards"]:
            hdr, arr = open_shard(self.directory / entry["file"], expected_fingerprint=self.fingerprint)
            if hdr.num_tokens != entry["tokens"]:
                raise ShardError(f"{entry['file']}: header has {hdr.num_tokens:,} tokens, meta.json {entry['tokens']:,}; "
                                 "re-run prepare_data.py")
            self.headers.append(hdr)
            self.arrays.append(arr)
        self.num_tokens = int(sum(h.num_tokens for h in self.headers))
        self.num_bytes = int(info.get("bytes", sum(h.num_bytes for h in self.headers)))
        self.vocab_size = int(self.meta["tokenizer"]["vocab_size"])
        if self.num_tokens == 0:
            raise ShardError(f"split {split!r} in {str(self.directory)!r} has no tokens")

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes per token of the split: bits/byte = loss_nats / ln 2 / bytes_per_token."""
        return self.num_bytes / self.num_tokens

    def __len__(self):
        return self.num_tokens

    def __repr__(self):
        return (f"TokenShards({str(self.directory)!r}, {self.split!r}: {len(self.arrays)} shards, "
                f"{self.num_tokens:,} tokens, {self.num_bytes:,} bytes, tokenizer {self.fingerprint})")


def _stack(arrays, shard_idx, starts, length) -> torch.Tensor:
    out = np.empty((len(starts), length), dtype=np.int64)
    for i, (s, st) in enumerate(zip(shard_idx, starts)):
        out[i] = arrays[s][st:st + length]
    return torch.from_numpy(out)


class RandomWindows:
    """Infinite iterator of (x, y) int64 batches [batch_size, seq_len]; see the module doc."""

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.shards, self.seq_len, self.batch_size = shards, int(seq_len), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.lengths = np.array([len(a) for a in shards.arrays], dtype=np.int64)
        if (self.lengths.max() if len(self.lengths) else 0) < self.seq_len + 1:
            raise ShardError(f"split {shards.split!r}: no shard holds seq_len + 1 = {self.seq_len + 1} tokens "
                             f"(largest has {int(self.lengths.max()) if len(self.lengths) else 0}); use a shorter "
                             f"seq_len or more data")
        self.epoch, self.pos = 0, 0      # position = windows consumed in this epoch (all ranks)
        self._cache_epoch, self._perm, self._offset, self._cum = None, None, 0, None

    def _epoch_layout(self, epoch: int):
        if self._cache_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self.seq_len))
            counts = np.maximum((self.lengths - offset - 1) // self.seq_len, 0)
            if counts.sum() == 0:  # offset too large for the short shards: fall back to 0
                offset, counts = 0, (self.lengths - 1) // self.seq_len
            self._cum = np.concatenate([[0], np.cumsum(counts)])
            self._perm = rng.permutation(int(self._cum[-1]))
            self._offset, self._cache_epoch = offset, epoch
        return self._perm, self._cum, self._offset

    def windows_per_epoch(self) -> int:
        return int(self._epoch_layout(self.epoch)[1][-1])

    def _take(self, n: int):
        """Next n global window ids as (epoch, shard, start) arrays, advancing the state."""
        shard_idx, starts = [], []
        while n > 0:
            perm, cum, offset = self._epoch_layout(self.epoch)
            k = min(n, len(perm) - self.pos)
            ids = perm[self.pos:self.pos + k]
            s = np.searchsorted(cum, ids, side="right") - 1
            shard_idx.append(s)
            starts.append(offset + (ids - cum[s]) * self.seq_len)
            self.pos += k
            n -= k
            if self.pos >= len(perm):
                self.epoch, self.pos = self.epoch + 1, 0
        return np.concatenate(shard_idx), np.concatenate(starts)

    def __iter__(self):
        return self

    def __next__(self):
        shard_idx, starts = self._take(self.batch_size * self.world_size)
        lo = self.rank * self.batch_size
        w = _stack(self.shards.arrays, shard_idx[lo:lo + self.batch_size], starts[lo:lo + self.batch_size],
                   self.seq_len + 1)
        return w[:, :-1], w[:, 1:]

    def state_dict(self) -> Dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size,
                "num_tokens": self.shards.num_tokens, "fingerprint": self.shards.fingerprint}

    def load_state_dict(self, state: Dict) -> None:
        for k in ("seed", "seq_len", "num_tokens", "fingerprint"):  # batch_size/world_size may change: see above
            mine = getattr(self, k) if hasattr(self, k) else getattr(self.shards, k)
            if k in state and state[k] != mine:
                raise ValueError(f"cannot resume the data stream: {k} was {state[k]!r}, now {mine!r} "
                                 "(resuming exactly needs the same data, seed and seq_len)")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class EvalWindows:
    """Sequential non-overlapping windows (each token is a target once) over every shard in
    order; the last batch may be smaller. Re-iterable; `max_batches` caps each pass."""

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, max_batches: Optional[int] = None):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be >= 1")
        self.shards, self.seq_len, self.batch_size, self.max_batches = shards, int(seq_len), int(batch_size), max_batches
        idx, starts = [], []
        for i, a in enumerate(shards.arrays):
            n = (len(a) - 1) // self.seq_len
            idx.append(np.full(max(n, 0), i))
            starts.append(np.arange(max(n, 0)) * self.seq_len)
        self._idx, self._starts = np.concatenate(idx).astype(np.int64), np.concatenate(starts).astype(np.int64)
        if len(self._idx) == 0:
            raise ShardError(f"split {shards.split!r} ({shards.num_tokens} tokens) is shorter than one window "
                             f"of seq_len + 1 = {self.seq_len + 1} tokens")

    @property
    def num_windows(self) -> int:
        n = len(self._idx)
        return n if self.max_batches is None else min(n, self.max_batches * self.batch_size)

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_windows)
            w = _stack(self.shards.arrays, self._idx[lo:hi], self._starts[lo:hi], self.seq_len + 1)
            yield w[:, :-1], w[:, 1:]
