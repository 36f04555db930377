"""How a tokenizer cuts a text: characters and UTF-8 bytes per token, the share of byte-fallback
tokens (characters the vocabulary lacks, spelled out byte by byte) and unknown pieces.

Used by scripts/evaluate.py (on the test split) and scripts/train_tokenizer.py (on the
validation text). Encoding goes through Tokenizer.encode, so the text is taken as NFC.
"""
from __future__ import annotations

import unicodedata
from typing import Iterable

__all__ = ["tokenizer_stats", "format_tokenizer_stats"]


def tokenizer_stats(tokenizer, texts: Iterable[str], batch: int = 1024) -> dict:
    """Figures over `texts` (documents or lines; special tokens are not added)."""
    byte_ids = {tokenizer.piece_to_id(f"<0x{b:02X}>") for b in range(256)} - {tokenizer.unk_id}
    tokens = chars = nbytes = fallback = unknown = docs = 0
    pending: list[str] = []

    def flush():
        nonlocal tokens, fallback, unknown
        for ids in tokenizer.encode(pending):
            tokens += len(ids)
            fallback += sum(1 for i in ids if i in byte_ids)
            unknown += sum(1 for i in ids if i == tokenizer.unk_id)
        pending.clear()

    for text in texts:
        text = unicodedata.normalize("NFC", text)
        docs += 1
        chars += len(text)
        nbytes += len(text.encode("utf-8"))
        pending.append(text)
        if len(pending) >= batch:
            flush()
    flush()
    return {"documents": docs, "tokens": tokens, "chars": chars, "bytes": nbytes,
            "chars_per_token": chars / tokens if tokens else 0.0,
            "bytes_per_token": nbytes / tokens if tokens else 0.0,
            "byte_fallback_tokens": fallback, "byte_fallback_share": fallback / tokens if tokens else 0.0,
            "unknown_tokens": unknown, "vocab_size": tokenizer.vocab_size}


def format_tokenizer_stats(s: dict) -> str:
    return (f"{s['tokens']:,} tokens over {s['chars']:,} chars / {s['bytes']:,} bytes: "
            f"{s['chars_per_token']:.3f} chars/token, {s['bytes_per_token']:.3f} bytes/token, "
            f"byte fallback {s['byte_fallback_share']:.2%} ({s['byte_fallback_tokens']:,} tokens), "
            f"unknown {s['unknown_tokens']:,}")
