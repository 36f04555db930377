"""Text encodings of input files: which one a file is in, and decoding it block by block.

Korean text still comes in several encodings: UTF-8 (with or without a BOM), CP949/EUC-KR (what
Korean Windows tools write), UTF-16 (Windows Notepad's "Unicode", with a BOM, sometimes without)
and, rarely, Johab. `sniff` decides from a file's first bytes:
  1. a byte order mark names the encoding;
  2. bytes without NULs that are UTF-8 (a few stray invalid sequences allowed) are UTF-8;
  3. else charset-normalizer chooses among the Korean encodings (KOREAN_ENCODINGS); when none
     fits, or the file has too little non-ASCII text to tell, EncodingError: a file is never
     used half-decoded or guessed from a few bytes.
`Decoder` decodes incrementally (a stream is never read whole). Invalid sequences become U+FFFD
and are counted; a block where they are not rare (the file changes encoding, or the guess was
wrong) raises EncodingError.
"""
from __future__ import annotations

import codecs
import threading
from typing import Tuple

from ..errors import KrMiniLlmError

__all__ = ["EncodingError", "KOREAN_ENCODINGS", "check_encoding", "sniff", "Decoder", "is_plain_utf8"]

# What the detector may choose from (charset-normalizer's names); EUC-KR is decoded as CP949, its superset.
KOREAN_ENCODINGS = ("cp949", "euc_kr", "johab", "utf_16_le", "utf_16_be")
_CANONICAL = {"euc_kr": "cp949", "utf_16_le": "utf-16-le", "utf_16_be": "utf-16-be"}
# longest first: the UTF-32-LE mark starts with the UTF-16-LE one
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_EUC_KR_FILLER = b"\xa4\xd4"
SNIFF_BYTES = 64 << 10          # what the detector looks at
_ASCII = bytes(range(128))
# invalid sequences tolerated: at most 1 in this many non-ASCII bytes (a stray byte, not a wrong encoding)
_RARE = 50
_FEW = 16                       # ... and in a block, up to this many whatever the ratio
# below this many non-ASCII bytes (~8 Korean characters) CP949, Johab and UTF-16 are too often confused
_EVIDENCE = 16


class EncodingError(KrMiniLlmError, ValueError):
    """Bytes that are not text in the encoding given or found (the message leaves out the file)."""


def check_encoding(name: str) -> str:
    """`name` if Python knows the encoding (for --encoding), else EncodingError."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise EncodingError(f"unknown encoding {name!r}; e.g. utf-8, cp949 (EUC-KR), utf-16, johab") from None
    return name


class _Counter(threading.local):
    n = 0


_REPLACED = _Counter()


def _replace_counted(e: UnicodeDecodeError):
    _REPLACED.n += 1
    return "\ufffd", e.end


_ERRORS = "kr_mini_llm.replace_counted"
codecs.register_error(_ERRORS, _replace_counted)


def _nonascii(data: bytes) -> int:
    return len(data.translate(None, _ASCII))


def _rare(errors: int, data: bytes) -> bool:
    return errors * _RARE <= _nonascii(data)


def _sample(head: bytes, complete: bool) -> bytes:
    """`head` cut where no character can be split (the detector rejects a cut character)."""
    if complete:
        return head
    if b"\x00" in head:                  # UTF-16: whole code units, no half surrogate pair at the end
        s = head[:len(head) & ~1]
        return s[:-2] if len(s) >= 2 and (0xD8 <= s[-1] <= 0xDB or 0xD8 <= s[-2] <= 0xDB) else s
    # after a line break or space: never part of a CP949/EUC-KR/Johab character
    cut = max(head.rfind(b"\n"), head.rfind(b" ")) + 1
    return head[:cut] if cut else head


def sniff(head: bytes, complete: bool = False) -> Tuple[str, str]:
    """(encoding, how it was found: "BOM" or "detected") of a file starting with `head`
    (`complete`: that is the whole file). EncodingError when no encoding fits confidently."""
    for bom, enc in _BOMS:
        if head.startswith(bom):
            return enc, "BOM"
    if b"\x00" not in head:             # text in an 8-bit encoding has no NUL; UTF-16 almost always does
        before = _REPLACED.n
        codecs.getincrementaldecoder("utf-8")(_ERRORS).decode(head, complete)
        if _rare(_REPLACED.n - before, head):
            return "utf-8", "detected"
        if _nonascii(head) < _EVIDENCE:
            raise EncodingError(f"not UTF-8, and too short to tell its encoding ({_nonascii(head)} non-ASCII "
                                "bytes); convert it to UTF-8, or name its encoding with --encoding")
    from charset_normalizer import from_bytes
    best = from_bytes(_sample(head, complete), cp_isolation=list(KOREAN_ENCODINGS)).best()
    if best is None:
        raise EncodingError("cannot tell its text encoding (not UTF-8, and not confidently CP949/EUC-KR, UTF-16 "
                            "or Johab); convert it to UTF-8, or name its encoding with --encoding")
    enc = _CANONICAL.get(best.encoding, best.encoding)
    if enc == "cp949" and _EUC_KR_FILLER in head and _decodes(_sample(head, complete), "euc-kr"):
        enc = "euc-kr"                  # EUC-KR's 8-byte syllables (filler + 3 jamo): CP949 reads them as jamo
    return enc, "detected"


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


class Decoder:
    """Incremental decoding of one file: `decode(block)` per block read, `decode(b"", True)` at
    the end. Counts the invalid sequences replaced (`errors`); a leading BOM character is dropped."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self.errors = 0
        self.offset = 0                  # bytes decoded so far
        self._dec = codecs.getincrementaldecoder(encoding)(_ERRORS)
        self._first = True

    def decode(self, data: bytes, final: bool = False) -> str:
        before = _REPLACED.n
        text = self._dec.decode(data, final)
        bad = _REPLACED.n - before
        if bad:
            self.errors += bad
            if bad > _FEW and not _rare(bad, data):
                raise EncodingError(f"not {self.encoding} text in bytes {self.offset:,}-{self.offset + len(data):,} "
                                    f"({bad:,} invalid sequences); convert it to UTF-8, or name its encoding "
                                    "with --encoding")
        self.offset += len(data)
        if self._first and text:
            self._first = False
            if text[0] == "\ufeff":      # a BOM the codec keeps (utf-8, utf-16-le named with --encoding)
                text = text[1:]
        return text


def is_plain_utf8(path, block: int = 1 << 20) -> bool:
    """Whether the file is valid UTF-8 without a BOM and without NULs (what tools that read
    UTF-8 bytes as they are, like SentencePiece, can take); read a block at a time."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    with open(path, "rb") as f:
        data = f.read(block)
        if data.startswith(codecs.BOM_UTF8):
            return False
        try:
            while data:
                if b"\x00" in data:
                    return False
                dec.decode(data)
                data = f.read(block)
            dec.decode(b"", True)
        except UnicodeDecodeError:
            return False
    return True
