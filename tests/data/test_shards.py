import json

import numpy as np
import pytest

from kr_mini_llm.data.datasets import TokenShards
from kr_mini_llm.data.shards import HEADER_SIZE, MAGIC, ShardError, open_shard, read_header, write_meta, write_shard


def _make_dir(tmp_path, tokens, fp="abcdef0123456789", dtype=np.uint16):
    write_shard(tmp_path / "train_00000.bin", np.asarray(tokens, dtype=dtype), num_bytes=123, tokenizer_fingerprint=fp)
    write_meta(tmp_path, {"tokenizer": {"fingerprint": fp, "vocab_size": 70000 if dtype == np.uint32 else 400},
                          "splits": {"train": {"tokens": len(tokens), "bytes": 123,
                                               "shards": [{"file": "train_00000.bin", "tokens": len(tokens), "bytes": 123}]}}})
    return tmp_path / "train_00000.bin"


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_header_and_memmap_round_trip(tmp_path, dtype):
    tokens = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, 1000).astype(dtype)
    p = _make_dir(tmp_path, tokens, dtype=dtype)
    assert p.read_bytes()[:8] == MAGIC and p.stat().st_size == HEADER_SIZE + tokens.nbytes
    h = read_header(p)
    assert (h.itemsize, h.num_tokens, h.num_bytes, h.tokenizer_fingerprint) == (np.dtype(dtype).itemsize, 1000, 123, "abcdef0123456789")
    _, mm = open_shard(p)
    assert isinstance(mm, np.memmap) and np.array_equal(mm, tokens)
    ts = TokenShards(tmp_path, "train")
    assert ts.num_tokens == 1000 and ts.bytes_per_token == pytest.approx(0.123)


def test_truncated_shard(tmp_path):
    p = _make_dir(tmp_path, np.arange(100))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"truncated: header says 100 tokens \(264 bytes\), file has 254 bytes"):
        TokenShards(tmp_path, "train")
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(ShardError, match="truncated header"):
        read_header(p)


def test_bad_magic_and_version(tmp_path):
    p = _make_dir(tmp_path, np.arange(10))
    raw = bytearray(p.read_bytes())
    p.write_bytes(b"NOTATOK\0" + bytes(raw[8:]))
    with pytest.raises(ShardError, match="bad magic b'NOTATOK.*not a kr-mini-llm token shard"):
        TokenShards(tmp_path, "train")
    raw[8] = 9
    p.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="shard format version 9"):
        read_header(p)


def test_fingerprint_mismatch(tmp_path, tiny_tokenizer):
    _make_dir(tmp_path, np.arange(10))
    with pytest.raises(ShardError, match=rf"made with tokenizer abcdef0123456789, but the tokenizer in use is {tiny_tokenizer.fingerprint}"):
        TokenShards(tmp_path, "train", expected_fingerprint=tiny_tokenizer)
    with pytest.raises(ShardError, match="made with tokenizer abcdef0123456789, not 0000"):
        open_shard(tmp_path / "train_00000.bin", expected_fingerprint="0000")
    # a shard whose header disagrees with meta.json's tokenizer
    write_shard(tmp_path / "train_00000.bin", np.arange(10, dtype=np.uint16), 1, "ffffffffffffffff")
    with pytest.raises(ShardError, match="made with tokenizer ffffffffffffffff"):
        TokenShards(tmp_path, "train")


def test_missing_meta_split_and_shard(tmp_path):
    with pytest.raises(ShardError, match="no meta.json in .*prepare_data.py --tokenizer"):
        TokenShards(tmp_path, "train")
    _make_dir(tmp_path, np.arange(10))
    with pytest.raises(ShardError, match=r"split 'valid' not in .*\(has \['train'\]\)"):
        TokenShards(tmp_path, "valid")
    (tmp_path / "train_00000.bin").unlink()
    with pytest.raises(ShardError, match="token shard not found"):
        TokenShards(tmp_path, "train")
    (tmp_path / "meta.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ShardError, match="not valid JSON"):
        TokenShards(tmp_path, "train")
