"""Exact and near (MinHash LSH) deduplication with compact, streaming state.

Documents arrive in batches, in corpus order; a document is a duplicate when an *earlier kept*
document matches it. State per kept document: an 8-byte exact hash, one 4-byte key + 4-byte id
per LSH band (16 bands: 128 bytes) in sorted numpy runs, and its 256-byte MinHash signature on
disk (read back only to verify an LSH candidate). So 10 M kept documents hold ~1.4 GB in memory,
not the ~40 GB that Python sets and dicts of bytes keys would take.

Signatures: 64 multiply-shift hashes of the character 5-grams (whitespace removed), the min of
each over the document. A long document is hashed in segments whose minima are combined, so its
cost is linear in its length and its memory bounded by the segment size.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import List, Optional, Sequence

import numpy as np

from .utf8 import utf8_pieces

__all__ = ["doc_hash", "MinHasher", "SortedRuns", "NearDupIndex", "ExactDupIndex"]

_SEGMENT = 1 << 15          # shingles hashed at once: bounds the memory of one long document


def doc_hash(text: str) -> int:
    """8-byte blake2b of the UTF-8 text, as an unsigned int (exact-dedup key)."""
    h = hashlib.blake2b(digest_size=8)
    for piece in utf8_pieces(text):
        h.update(piece)
    return int.from_bytes(h.digest(), "little")


class MinHasher:
    """MinHash signatures [n, num_perm] (uint32) of many documents at once: the documents of a
    batch are hashed together, a long one in overlapping pieces of _SEGMENT characters."""

    def __init__(self, num_perm: int = 64, shingle: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 62, num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 1 << 62, num_perm, dtype=np.uint64)
        self.num_perm, self.shingle = num_perm, shingle

    def __call__(self, docs: Sequence[str]) -> np.ndarray:
        sig = np.empty((len(docs), self.num_perm), np.uint32)
        owners: List[int] = []
        pieces: List[str] = []
        size, self._last = 0, -1
        for i, d in enumerate(docs):
            for piece in self._segments(d):
                pieces.append(piece)
                owners.append(i)
                size += len(piece)
                if size >= _SEGMENT:
                    self._hash(pieces, owners, sig)
                    pieces, owners, size = [], [], 0
        if pieces:
            self._hash(pieces, owners, sig)
        return sig

    def _segments(self, d: str):
        """s[j:j + _SEGMENT + k - 1] for j = 0, _SEGMENT, ... <= len(s) - k, where s is `d` without
        whitespace (zero-padded to one shingle when shorter); made from `d` a slice at a time, so
        a long document is never copied whole nor split into a list of its words."""
        k = self.shingle
        width = _SEGMENT + k - 1
        buf, emitted = "", False
        for i in range(0, len(d), _SEGMENT):
            buf += "".join(d[i:i + _SEGMENT].split())
            while len(buf) >= width:
                yield buf[:width]
                emitted, buf = True, buf[_SEGMENT:]
        if len(buf) >= k:
            yield buf
        elif not emitted:
            yield buf + "\0" * (k - len(buf))

    def _hash(self, pieces, owners, sig):
        k = self.shingle
        cps = np.frombuffer("".join(pieces).encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.uint64)
        n = len(cps) - k + 1
        h = np.zeros(n, np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):          # wrap-around uint64 arithmetic is the hash
                h *= np.uint64(1_000_003)
                h += cps[j:n + j]
        # keep the shingles that lie inside one piece
        lens = np.fromiter(map(len, pieces), np.int64, len(pieces))
        nwin = lens - k + 1
        first = np.cumsum(nwin) - nwin
        idx = np.repeat(np.cumsum(lens) - lens - first, nwin) + np.arange(int(nwin.sum()))
        h = h[idx]
        tmp = np.empty_like(h)
        mins = np.empty((len(pieces), self.num_perm), np.uint64)
        with np.errstate(over="ignore"):
            for p in range(self.num_perm):
                np.multiply(h, self.a[p], out=tmp)
                tmp += self.b[p]
                mins[:, p] = np.minimum.reduceat(tmp, first)
        mins >>= np.uint64(32)          # monotone, so the min of the shifted values
        owners = np.asarray(owners)
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        per_doc = np.minimum.reduceat(mins, starts, axis=0)
        if owners[0] == self._last:         # a long document continued from the last call
            per_doc[0] = np.minimum(per_doc[0], sig[owners[0]])
        sig[owners[starts]] = per_doc
        self._last = owners[-1]


class SortedRuns:
    """A multimap uint key -> uint32 value as a few sorted numpy runs (a log-structured merge:
    runs of similar size merge, so there are O(log n) runs and each entry is moved O(log n) times)."""

    def __init__(self, key_dtype=np.uint32):
        self.key_dtype = np.dtype(key_dtype)
        self.runs: List[tuple] = []

    def __len__(self):
        return sum(len(k) for k, _ in self.runs)

    @property
    def nbytes(self):
        return sum(k.nbytes + v.nbytes for k, v in self.runs)

    def add(self, keys: np.ndarray, vals: np.ndarray):
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order].astype(self.key_dtype), vals[order].astype(np.uint32)))
        while len(self.runs) >= 2 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (k1, v1), (k2, v2) = self.runs[-2], self.runs.pop()
            pos = np.searchsorted(k1, k2, side="right")
            self.runs[-1] = (np.insert(k1, pos, k2), np.insert(v1, pos, v2))

    def lookup(self, keys: np.ndarray):
        """(query index, value) pairs for every stored entry whose key equals a query key."""
        qi, vals = [], []
        keys = keys.astype(self.key_dtype)
        for k, v in self.runs:
            lo = np.searchsorted(k, keys, side="left")
            hi = np.searchsorted(k, keys, side="right")
            n = hi - lo
            hit = np.flatnonzero(n)
            if not len(hit):
                continue
            reps = n[hit]
            q = np.repeat(hit, reps)
            offs = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
            qi.append(q)
            vals.append(v[lo[q] + offs])
        if not qi:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        return np.concatenate(qi), np.concatenate(vals)


class ExactDupIndex:
    """Exact dedup by 8-byte hashes: `keep(keys)` marks first occurrences (batch order included)."""

    def __init__(self):
        self.seen = SortedRuns(np.uint64)

    def keep(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.uint64)
        _, first = np.unique(keys, return_index=True)
        mask = np.zeros(len(keys), bool)
        mask[first] = True
        q, _ = self.seen.lookup(keys)
        mask[q] = False
        self.seen.add(keys[mask], np.zeros(int(mask.sum()), np.uint32))
        return mask

    @property
    def nbytes(self):
        return self.seen.nbytes


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """[n, bands] uint32 keys: each band's rows mixed into 32 bits (collisions only cost a check)."""
    n, p = sig.shape
    rows = p // bands
    s = sig.reshape(n, bands, rows).astype(np.uint64)
    h = np.full((n, bands), 0x9E3779B97F4A7C15, np.uint64)
    with np.errstate(over="ignore"):
        h ^= np.arange(bands, dtype=np.uint64)
        for r in range(rows):
            h = (h ^ s[:, :, r]) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(32)).astype(np.uint32)


class NearDupIndex:
    """MinHash LSH near dedup: a document is dropped when an earlier kept document shares an LSH
    band with it and their signatures agree on >= threshold of the positions."""
    BANDS = 16

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, bands: int = BANDS,
                 tmp_dir: Optional[str] = None):
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.threshold, self.num_perm, self.bands = threshold, num_perm, bands
        self.index = [SortedRuns(np.uint32) for _ in range(bands)]
        self._sigs = tempfile.TemporaryFile(dir=tmp_dir)      # kept signatures, row i = kept doc i
        self.kept = 0

    def close(self):
        self._sigs.close()

    def _read_sigs(self, ids: np.ndarray) -> np.ndarray:
        """Signatures of kept documents `ids` (sorted, distinct), read with pread: no mapping,
        so the file never counts in this process's memory."""
        row = self.num_perm * 4
        fd = self._sigs.fileno()
        buf = b"".join(os.pread(fd, row, int(i) * row) for i in ids.tolist())
        return np.frombuffer(buf, np.uint32).reshape(len(ids), self.num_perm)

    def _best_agreement(self, q: np.ndarray, ids: np.ndarray, sig: np.ndarray, n: int) -> np.ndarray:
        """Per query document, the most signature positions it shares with its kept candidates."""
        best = np.zeros(n, np.int64)
        step = 1 << 14                   # bounds the [pairs, num_perm] temporary
        for s in range(0, len(q), step):
            qq, ii = q[s:s + step], ids[s:s + step]
            uniq, inv = np.unique(ii, return_inverse=True)
            agree = np.count_nonzero(self._read_sigs(uniq)[inv] == sig[qq], axis=1)
            np.maximum.at(best, qq, agree)
        return best

    def keep(self, sig: np.ndarray, keys: Optional[np.ndarray] = None) -> np.ndarray:
        """Mask of the documents to keep; `keys` = band_keys(sig) when computed elsewhere."""
        n, need = len(sig), self.threshold * self.num_perm
        keys = band_keys(sig, self.bands) if keys is None else keys
        # candidates among the documents kept before this batch (distinct (query, id) pairs)
        found = [self.index[b].lookup(keys[:, b]) for b in range(self.bands)]
        pairs = np.unique(np.concatenate([(q.astype(np.int64) << 32) | v for q, v in found]))
        best = self._best_agreement(pairs >> 32, pairs & 0xFFFFFFFF, sig, n)
        mask = best < need
        # ... and among the earlier documents of this batch, decided in order
        flat = keys.astype(np.uint64) | (np.arange(self.bands, dtype=np.uint64) << np.uint64(32))[None, :]
        _, inv, counts = np.unique(flat.ravel(), return_inverse=True, return_counts=True)
        shared = (counts[inv.ravel()] > 1).reshape(n, self.bands).any(axis=1)
        buckets: dict = {}
        for i in np.flatnonzero(shared & mask).tolist():
            row = [(b, int(keys[i, b])) for b in range(self.bands)]
            seen = {k for key in row for k in buckets.get(key, ())}
            if seen and np.count_nonzero(sig[sorted(seen)] == sig[i], axis=1).max() >= need:
                mask[i] = False
                continue
            for key in row:
                buckets.setdefault(key, []).append(i)
        kept = np.flatnonzero(mask)
        ids = np.arange(self.kept, self.kept + len(kept), dtype=np.uint32)
        for b in range(self.bands):
            self.index[b].add(keys[kept, b], ids)
        self._sigs.seek(0, os.SEEK_END)
        self._sigs.write(np.ascontiguousarray(sig[kept], np.uint32).tobytes())
        self._sigs.flush()
        self.kept += len(kept)
        return mask

    @property
    def nbytes(self):
        return sum(r.nbytes for r in self.index)
