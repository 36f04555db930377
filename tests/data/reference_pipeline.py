"""The text stage as it was before streaming (in memory, one process): the oracle the streaming
pipeline is checked against. Slow and memory-hungry on purpose: plain sets, dicts of bytes keys,
one [num_perm, shingles] matrix per document."""
import hashlib
import re
import unicodedata

import numpy as np

_DROP = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufffd]")
_SPACE = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")


def normalize_text(text):
    text = _DROP.sub("", unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")))
    lines = (_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def hangul_ratio(line):
    def is_hangul(c):
        o = ord(c)
        return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F
    letters = [c for c in line if c.isalpha()]
    return sum(map(is_hangul, letters)) / len(letters) if letters else 0.0


def filter_lines(text, min_line_chars=5, min_hangul_ratio=0.3):
    return "\n".join(ln for ln in text.split("\n")
                     if len(ln) >= min_line_chars and (min_hangul_ratio <= 0 or hangul_ratio(ln) >= min_hangul_ratio))


def exact_dedup(docs):
    seen, out = set(), []
    for d in docs:
        k = hashlib.blake2b(d.encode("utf-8"), digest_size=16).digest()
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out


def minhash_signatures(docs, num_perm=64, shingle=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 62, num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 62, num_perm, dtype=np.uint64)
    sig = np.empty((len(docs), num_perm), np.uint64)
    with np.errstate(over="ignore"):
        for i, d in enumerate(docs):
            cps = np.frombuffer("".join(d.split()).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            if len(cps) < shingle:
                cps = np.concatenate([cps, np.zeros(shingle - len(cps), np.uint64)])
            h = np.zeros(len(cps) - shingle + 1, np.uint64)
            for j in range(shingle):
                h = h * np.uint64(1_000_003) + cps[j:len(cps) - shingle + 1 + j]
            sh = np.unique(h)
            sig[i] = ((sh[None, :] * a[:, None] + b[:, None]) >> np.uint64(32)).min(axis=1)
    return sig


def near_dedup(docs, threshold=0.8, num_perm=64, bands=16):
    if len(docs) < 2:
        return list(docs)
    sig = minhash_signatures(docs, num_perm)
    rows = num_perm // bands
    buckets = [dict() for _ in range(bands)]
    kept = []
    for i in range(len(docs)):
        keys = [sig[i, b * rows:(b + 1) * rows].tobytes() for b in range(bands)]
        cands = set()
        for b, key in enumerate(keys):
            cands.update(buckets[b].get(key, ()))
        if any(np.mean(sig[i] == sig[j]) >= threshold for j in cands):
            continue
        kept.append(i)
        for b, key in enumerate(keys):
            buckets[b].setdefault(key, []).append(i)
    return [docs[i] for i in kept]


def clean(docs, min_line_chars=5, min_hangul_ratio=0.3, min_doc_chars=100, threshold=0.8):
    """-> (kept documents in order, per-step document counts)."""
    steps = [list(docs)]
    steps.append([t for t in map(normalize_text, steps[-1]) if t])
    steps.append([t for t in (filter_lines(d, min_line_chars, min_hangul_ratio) for d in steps[-1]) if t])
    steps.append([d for d in steps[-1] if len(d) >= min_doc_chars])
    steps.append(exact_dedup(steps[-1]))
    steps.append(near_dedup(steps[-1], threshold))
    assert unicodedata.is_normalized("NFC", "".join(steps[-1]))
    return steps[-1], [len(s) for s in steps]
