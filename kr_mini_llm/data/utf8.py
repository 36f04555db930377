"""UTF-8 of long strings a piece at a time: a document of any length is measured, hashed and
written without its whole UTF-8 copy in memory."""
from __future__ import annotations

from typing import Iterator

__all__ = ["utf8_pieces", "utf8_len"]

_PIECE = 1 << 20            # characters encoded at once


def utf8_pieces(text: str) -> Iterator[bytes]:
    """The UTF-8 of `text`, in pieces."""
    if len(text) <= _PIECE:
        yield text.encode("utf-8")
        return
    for i in range(0, len(text), _PIECE):
        yield text[i:i + _PIECE].encode("utf-8")


def utf8_len(text: str) -> int:
    """len(text.encode("utf-8")) without the copy for a long text."""
    if text.isascii():
        return len(text)
    return sum(map(len, utf8_pieces(text)))
