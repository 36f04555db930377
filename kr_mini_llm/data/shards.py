"""Binary token shards.

A shard `<split>_<index:05d>.bin` is a 64-byte little-endian header followed by the token ids:

  offset size  field
  0      8     magic b"KRMLTOK\\0"
  8      4     format version (uint32, 1)
  12     4     bytes per token (uint32: 2 = uint16, 4 = uint32)
  16     8     token count (uint64)
  24     8     UTF-8 bytes of the text the tokens encode (uint64)
  32     16    tokenizer fingerprint (ASCII hex)
  48     16    source fingerprint (ASCII hex; hash of the text chunk, lets reruns skip work)

uint16 is used while the vocabulary size is <= 65535, uint32 otherwise. Each document is
stored as [bos] + ids + [eos]. `meta.json` beside the shards lists them per split with token
and byte counts, the tokenizer fingerprint, the source and the split seed.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ..errors import KrMiniLlmError
from ..io.atomic import atomic_write_text

__all__ = ["MAGIC", "VERSION", "HEADER_SIZE", "ShardHeader", "ShardError", "dtype_for_vocab",
           "write_shard", "ShardWriter", "read_header", "open_shard", "read_meta", "write_meta", "META_NAME"]

MAGIC = b"KRMLTOK\0"
VERSION = 1
HEADER_SIZE = 64
META_NAME = "meta.json"
_HEADER = struct.Struct("<8sIIQQ16s16s")  # 64 bytes


class ShardError(KrMiniLlmError, ValueError):
    """A shard or meta.json that cannot be used: missing, truncated, corrupt, other tokenizer."""


@dataclass
class ShardHeader:
    itemsize: int
    num_tokens: int
    num_bytes: int
    tokenizer_fingerprint: str
    source_fingerprint: str
    version: int = VERSION

    @property
    def dtype(self):
        return np.dtype(np.uint16 if self.itemsize == 2 else np.uint32)


def dtype_for_vocab(vocab_size: int):
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class ShardWriter:
    """Writes a shard piece by piece (tokens appended as they are encoded), atomically: the
    header is written last, then the tmp file is renamed, so an interrupted run never leaves a
    valid-looking shard.

        with ShardWriter(path, np.uint16, tokenizer_fp, source_fp) as w:
            w.append(tokens, num_bytes)
    """

    def __init__(self, path: Union[str, os.PathLike], dtype, tokenizer_fingerprint: str, source_fingerprint: str = ""):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.uint16, np.uint32):
            raise ValueError(f"shard tokens must be uint16 or uint32, got {self.dtype}")
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.source_fingerprint = source_fingerprint     # may be set before close()
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.num_tokens = self.num_bytes = 0
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_SIZE)

    def append(self, tokens: np.ndarray, num_bytes: int):
        self.f.write(np.ascontiguousarray(tokens).astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self.num_tokens += int(np.asarray(tokens).size)
        self.num_bytes += int(num_bytes)

    def close(self) -> ShardHeader:
        tfp, sfp = self.tokenizer_fingerprint, self.source_fingerprint
        hdr = ShardHeader(self.dtype.itemsize, self.num_tokens, self.num_bytes, tfp, sfp)
        self.f.seek(0)
        self.f.write(_HEADER.pack(MAGIC, VERSION, hdr.itemsize, hdr.num_tokens, hdr.num_bytes,
                                  tfp.encode("ascii")[:16].ljust(16, b"\0"), sfp.encode("ascii")[:16].ljust(16, b"\0")))
        self.f.close()
        os.replace(self.tmp, self.path)
        return hdr

    def abort(self):
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path: Union[str, os.PathLike], tokens: np.ndarray, num_bytes: int,
                tokenizer_fingerprint: str, source_fingerprint: str = "") -> ShardHeader:
    """Write a whole shard at once (see ShardWriter)."""
    tokens = np.asarray(tokens)
    w = ShardWriter(path, tokens.dtype, tokenizer_fingerprint, source_fingerprint)
    try:
        w.append(tokens, num_bytes)
    except BaseException:
        w.abort()
        raise
    return w.close()


def read_header(path: Union[str, os.PathLike]) -> ShardHeader:
    """Parse and validate a shard header against the file size; ShardError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"token shard not found: {str(path)!r}; run scripts/prepare_data.py --tokenizer ...")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise ShardError(f"{str(path)!r}: truncated header ({size} bytes, need {HEADER_SIZE}); re-run prepare_data.py")
    magic, version, itemsize, n_tok, n_bytes, tfp, sfp = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"{str(path)!r}: bad magic {magic!r} (expected {MAGIC!r}); not a kr-mini-llm token shard")
    if version != VERSION:
        raise ShardError(f"{str(path)!r}: shard format version {version}, this code reads version {VERSION}")
    if itemsize not in (2, 4):
        raise ShardError(f"{str(path)!r}: bad header, {itemsize} bytes per token (expected 2 or 4)")
    expected = HEADER_SIZE + n_tok * itemsize
    if size != expected:
        kind = "truncated" if size < expected else "has trailing bytes"
        raise ShardError(f"{str(path)!r}: {kind}: header says {n_tok:,} tokens ({expected:,} bytes), "
                         f"file has {size:,} bytes; re-run prepare_data.py to rebuild it")
    return ShardHeader(itemsize, n_tok, n_bytes, tfp.rstrip(b"\0").decode("ascii", "replace"),
                       sfp.rstrip(b"\0").decode("ascii", "replace"), version)


def open_shard(path: Union[str, os.PathLike], expected_fingerprint: Optional[str] = None):
    """(header, read-only memmap of the tokens)."""
    hdr = read_header(path)
    if expected_fingerprint and hdr.tokenizer_fingerprint != expected_fingerprint:
        raise ShardError(f"{str(path)!r} was made with tokenizer {hdr.tokenizer_fingerprint}, not {expected_fingerprint}; "
                         f"re-run prepare_data.py with this tokenizer")
    if hdr.num_tokens == 0:
        return hdr, np.zeros(0, dtype=hdr.dtype)
    mm = np.memmap(path, dtype=hdr.dtype.newbyteorder("<"), mode="r", offset=HEADER_SIZE, shape=(hdr.num_tokens,))
    return hdr, mm


def read_meta(directory: Union[str, os.PathLike]) -> Dict:
    p = Path(directory) / META_NAME
    if not p.is_file():
        raise ShardError(f"no {META_NAME} in {str(directory)!r}; create token shards with "
                         f"`python scripts/prepare_data.py --tokenizer models/tokenizer.model`")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ShardError(f"{str(p)!r} is not valid JSON ({e}); re-run prepare_data.py") from None


def write_meta(directory: Union[str, os.PathLike], meta: Dict) -> Path:
    return atomic_write_text(Path(directory) / META_NAME, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
