"""Loss, perplexity and bits per byte of a model on the whole test split.

Every token of the split is a target once (windows of the model's context, stride = context,
the last window of each stream shorter), except the <s> that opens each document: it follows
the previous document's </s> and says nothing about the text. Bits per byte divide the summed
loss by the UTF-8 bytes of the original documents, counted exactly (token shards record them
per split in meta.json; from text they are counted here), so models with different tokenizers
compare: a model whose tokenizer made the shards reads them; any other re-encodes the test
documents with its own tokenizer.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import KrMiniLlmError

__all__ = ["TestSplit", "EvalError", "test_loss", "split_documents"]

# prepare_data.py writes documents separated by a blank line (kr_mini_llm.data.pipeline.DOC_SEPARATOR).
from ..data.pipeline import DOC_SEPARATOR


class EvalError(KrMiniLlmError, ValueError):
    """Bad input to the evaluation: a missing split, model part or file."""


def split_documents(text: str) -> list[str]:
    """The documents of a processed split file, as prepare_data.py's tokenizer stage reads them."""
    docs = [d for d in text.split(DOC_SEPARATOR) if d.strip()]
    return [d[:-1] if d.endswith("\n") else d for d in docs]


@dataclass
class TestSplit:
    """The test split: token shards (--tokens) and/or the processed text (test.txt)."""

    __test__ = False  # not a pytest test class, despite the name

    tokens_dir: Path | None
    text_path: Path | None

    @classmethod
    def find(cls, tokens: str | os.PathLike | None, text: str | os.PathLike | None = None) -> "TestSplit":
        tokens_dir = Path(tokens) if tokens else None
        if tokens_dir is not None:
            from ..data.shards import ShardError, read_meta

            try:
                meta = read_meta(tokens_dir)
            except ShardError as e:
                raise EvalError(str(e)) from None
            if "test" not in meta.get("splits", {}) or not meta["splits"]["test"].get("tokens"):
                raise EvalError(f"{str(tokens_dir)!r} has no test split (splits: {sorted(meta.get('splits', {}))}); "
                                "prepare the data with scripts/prepare_data.py, which writes train/valid/test")
        text_path = Path(text) if text else None
        if text_path is not None and not text_path.is_file():
            raise EvalError(f"test text not found: {str(text_path)!r}")
        if text_path is None and tokens_dir is not None:
            guess = tokens_dir.parent / "processed" / "test.txt"   # the default data/ layout
            text_path = guess if guess.is_file() else None
        if tokens_dir is None and text_path is None:
            raise EvalError("no test split: pass --tokens DIR (token shards with a test split) or --test_text FILE")
        return cls(tokens_dir, text_path)

    def documents(self, tokenizer=None) -> list[str]:
        """The test documents: from the text file, or decoded from the shards (needs their tokenizer)."""
        if self.text_path is not None:
            return split_documents(self.text_path.read_text(encoding="utf-8"))
        arrays = self._shard_arrays(tokenizer)
        if arrays is None:
            raise EvalError(f"the model's tokenizer did not make the shards in {str(self.tokens_dir)!r}, and no test "
                            "text was found to re-encode: pass --test_text data/processed/test.txt")
        docs = []
        for a in arrays:
            ends = np.flatnonzero(a == tokenizer.eos_id)
            start = 0
            for e in ends:
                docs.append(tokenizer.decode(a[start + 1:e]))   # skip <s>
                start = e + 1
        return docs

    def _shard_arrays(self, tokenizer):
        if self.tokens_dir is None:
            return None
        from ..data.datasets import TokenShards

        shards = TokenShards(self.tokens_dir, "test")
        return shards.arrays if shards.fingerprint == tokenizer.fingerprint else None

    def streams(self, tokenizer) -> tuple[list[np.ndarray], int, str]:
        """(token streams, UTF-8 bytes of the text they encode, where they came from)."""
        arrays = self._shard_arrays(tokenizer)
        if arrays is not None:
            from ..data.datasets import TokenShards

            return arrays, TokenShards(self.tokens_dir, "test").num_bytes, f"{self.tokens_dir} (token shards)"
        if self.text_path is None:
            self.documents(tokenizer)   # raises the explanation
        docs = self.documents()
        ids = tokenizer.encode(docs)
        stream = np.fromiter((t for x in ids for t in (tokenizer.bos_id, *x, tokenizer.eos_id)), dtype=np.int64)
        return [stream], sum(len(d.encode("utf-8")) for d in docs), f"{self.text_path} (re-encoded)"


@torch.no_grad()
def test_loss(model, tokenizer, split: TestSplit, batch_size: int = 8, seq_len: int | None = None,
              device: torch.device | str = "cpu") -> dict:
    """Loss (nats/token), perplexity and bits/byte over the whole test split."""
    streams, nbytes, source = split.streams(tokenizer)
    T = seq_len or model.config.max_seq_length
    windows = [(s, lo) for s in streams for lo in range(0, max(len(s) - 1, 0), T)]
    total_nats, counted = 0.0, 0
    model.eval()
    for b in range(0, len(windows), batch_size):
        chunk = windows[b:b + batch_size]
        x = torch.full((len(chunk), T), tokenizer.pad_id, dtype=torch.long)
        y = torch.full((len(chunk), T), -100, dtype=torch.long)
        for r, (s, lo) in enumerate(chunk):
            w = torch.from_numpy(np.asarray(s[lo:lo + T + 1], dtype=np.int64))
            x[r, :len(w) - 1] = w[:-1]
            y[r, :len(w) - 1] = w[1:]
        y[y == tokenizer.bos_id] = -100
        n = int((y != -100).sum())
        if n:
            loss = model(x.to(device), y.to(device))
            total_nats += float(loss) * n
            counted += n
    if counted == 0:
        raise EvalError("the test split has no tokens to predict")
    mean = total_nats / counted
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "bits_per_byte": total_nats / math.log(2) / nbytes,
            "tokens": counted, "bytes": nbytes, "seq_len": T, "source": source}
