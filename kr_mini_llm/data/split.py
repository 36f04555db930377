"""Split documents (never lines) into train/valid/test, seeded."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["split_documents", "parse_ratios", "auto_ratios", "SPLITS", "AUTO"]

SPLITS = ("train", "valid", "test")
AUTO = "auto"
# valid and test each get about this much input text, between 1% and 5% of it: on a corpus of a few
# MB, 1% is a dozen documents and two recipes' losses differ by less than its noise
EVAL_SPLIT_BYTES = 192 * 1024


def auto_ratios(input_bytes: Optional[int]) -> Tuple[float, float, float]:
    """The (train, valid, test) fractions of `--split auto` for an input of this many bytes
    (None when unknown, e.g. a Hugging Face dataset: 98/1/1)."""
    f = 0.01 if not input_bytes else min(0.05, max(0.01, EVAL_SPLIT_BYTES / input_bytes))
    return (1.0 - 2 * f, f, f)


def parse_ratios(spec: str) -> Optional[Tuple[float, float, float]]:
    """'98/1/1' or '0.98,0.01,0.01' -> normalised (train, valid, test) fractions; 'auto' -> None
    (auto_ratios, once the input's size is known)."""
    if spec.strip().lower() == AUTO:
        return None
    parts = [float(x) for x in spec.replace("/", ",").split(",")]
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split {spec!r}: expected three non-negative numbers, e.g. 98/1/1, or auto")
    s = sum(parts)
    return tuple(p / s for p in parts)  # type: ignore[return-value]


def split_documents(docs: Sequence[str], ratios: Sequence[float] = (0.98, 0.01, 0.01),
                    seed: int = 1234) -> Dict[str, List[str]]:
    """Shuffle document indices with `seed` and cut them by `ratios`. valid and test get at least
    one document each when their ratio is > 0 and there are enough documents; the original order
    is kept inside each split."""
    n = len(docs)
    if n == 0:
        raise ValueError("cannot split an empty corpus")
    r = np.asarray(ratios, dtype=float)
    r = r / r.sum()
    n_valid = int(round(n * r[1]))
    n_test = int(round(n * r[2]))
    if r[1] > 0 and n_valid == 0 and n >= 3:
        n_valid = 1
    if r[2] > 0 and n_test == 0 and n >= 3:
        n_test = 1
    n_train = n - n_valid - n_test
    if n_train <= 0 and r[0] > 0:
        raise ValueError(f"{n} documents are too few to split {ratios}")
    perm = np.random.default_rng(seed).permutation(n)
    parts = {"valid": perm[:n_valid], "test": perm[n_valid:n_valid + n_test], "train": perm[n_valid + n_test:]}
    return {k: [docs[i] for i in np.sort(parts[k])] for k in SPLITS}
