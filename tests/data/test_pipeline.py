"""prepare_text -> tokenize_splits -> TokenShards -> RandomWindows / EvalWindows, on a test-made corpus."""
import json

import numpy as np
import pytest
import torch

from kr_mini_llm.data.cleaning import EmptyCorpusError
from kr_mini_llm.data.datasets import EvalWindows, RandomWindows, TokenShards
from kr_mini_llm.data.pipeline import prepare_text, tokenize_splits
from kr_mini_llm.data.readers import InputError
from kr_mini_llm.data.shards import ShardError

QUIET = dict(log=lambda *a: None)


@pytest.fixture()
def prepared(tmp_path, junk_corpus_dir, tiny_tokenizer):
    raw, docs = junk_corpus_dir
    proc, toks = tmp_path / "processed", tmp_path / "tokens"
    pmeta = prepare_text(inputs=[str(raw)], out_dir=proc, ratios=(0.8, 0.1, 0.1), seed=7, **QUIET)
    tmeta = tokenize_splits(tiny_tokenizer.path, proc, toks, num_proc=1, shard_size_mb=0.004, progress=False, **QUIET)
    return raw, docs, proc, toks, pmeta, tmeta


def _docs(path):
    return [d.strip("\n") for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def test_prepare_text_cleans_dedups_and_splits(prepared):
    raw, docs, proc, toks, pmeta, _ = prepared
    out = {s: _docs(proc / f"{s}.txt") for s in ("train", "valid", "test")}
    everything = out["train"] + out["valid"] + out["test"]
    # every Korean document once (duplicate, near-duplicate, English, empty and script text gone)
    assert set(docs[:59]) <= set(everything)           # docs[59] had invalid bytes inserted
    assert len(everything) == len(set(everything)) == len(docs)
    assert not any("English" in d or "스크립트" in d or "메뉴 홈" in d or "\ufffd" in d for d in everything)
    assert set(out["train"]).isdisjoint(out["valid"]) and set(out["train"]).isdisjoint(out["test"])
    assert 1 <= len(out["valid"]) <= 12 and 1 <= len(out["test"]) <= 12     # ~10% each, by hash
    assert pmeta["read"]["invalid_utf8"] >= 1 and pmeta["read"]["empty_files"] == 1 and pmeta["split_seed"] == 7
    steps = [s["documents"] for s in pmeta["clean_steps"]]
    assert steps[0] > steps[-1] == len(docs)


def test_token_shards_meta_and_content(prepared, tiny_tokenizer):
    raw, docs, proc, toks, pmeta, tmeta = prepared
    meta = json.loads((toks / "meta.json").read_text())
    assert meta["tokenizer"]["fingerprint"] == tiny_tokenizer.fingerprint and meta["dtype"] == "uint16"
    assert meta["split_seed"] == 7 and meta["source"] == {"inputs": [str(raw)]}
    train = TokenShards(toks, "train", expected_fingerprint=tiny_tokenizer.fingerprint)
    assert len(train.arrays) > 1                       # several shards at this tiny shard size
    text = _docs(proc / "train.txt")
    assert train.num_bytes == sum(len(d.encode()) for d in text) == meta["splits"]["train"]["bytes"]
    flat = np.concatenate([np.asarray(a) for a in train.arrays]).tolist()
    # documents are bos + ids + eos, in order
    assert flat.count(tiny_tokenizer.bos_id) == flat.count(tiny_tokenizer.eos_id) == len(text)
    decoded, cur = [], []
    for t in flat:
        if t == tiny_tokenizer.bos_id:
            cur = []
        elif t == tiny_tokenizer.eos_id:
            decoded.append(tiny_tokenizer.decode(cur))
        else:
            cur.append(t)
    assert decoded == text


def test_rerun_skips_and_parallel_matches(prepared, tiny_tokenizer, tmp_path):
    raw, docs, proc, toks, pmeta, tmeta = prepared
    logs = []
    again = prepare_text(inputs=[str(raw)], out_dir=proc, ratios=(0.8, 0.1, 0.1), seed=7, log=logs.append)
    assert again == pmeta and any("up to date" in line for line in logs)
    mtimes = {p.name: p.stat().st_mtime_ns for p in toks.glob("*.bin")}
    m2 = tokenize_splits(tiny_tokenizer.path, proc, toks, num_proc=1, shard_size_mb=0.004, progress=False, **QUIET)
    assert m2["timing"]["bytes"] == 0 and {p.name: p.stat().st_mtime_ns for p in toks.glob("*.bin")} == mtimes
    # one damaged shard is rebuilt, the others are kept
    victim = sorted(toks.glob("train_*.bin"))[1]
    victim.write_bytes(victim.read_bytes()[:-4])
    m3 = tokenize_splits(tiny_tokenizer.path, proc, toks, num_proc=1, shard_size_mb=0.004, progress=False, **QUIET)
    assert 0 < m3["timing"]["bytes"] < tmeta["timing"]["bytes"]
    TokenShards(toks, "train")
    # two processes produce byte-identical shards
    par = tmp_path / "tokens2"
    tokenize_splits(tiny_tokenizer.path, proc, par, num_proc=2, shard_size_mb=0.004, progress=False, **QUIET)
    for p in toks.glob("*.bin"):
        assert (par / p.name).read_bytes() == p.read_bytes()


def test_random_windows_shapes_determinism_resume(prepared):
    toks = prepared[3]
    shards = TokenShards(toks, "train")
    it = RandomWindows(shards, seq_len=16, batch_size=4, seed=3)
    x, y = next(it)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    a = [next(RandomWindows(shards, 16, 4, seed=3)) for _ in range(1)][0]
    assert torch.equal(a[0], x)
    assert not torch.equal(next(RandomWindows(shards, 16, 4, seed=4))[0], x)
    # resume: the run continues with exactly the batches an uninterrupted run would give
    n_epoch = it.windows_per_epoch()
    ref = RandomWindows(shards, 16, 4, seed=3)
    full = [next(ref) for _ in range(n_epoch // 2)]       # crosses at least one epoch boundary
    it1 = RandomWindows(shards, 16, 4, seed=3)
    for _ in range(5):
        next(it1)
    state = json.loads(json.dumps(it1.state_dict()))
    it2 = RandomWindows(shards, 16, 4, seed=3)
    it2.load_state_dict(state)
    for b in full[5:]:
        nx, ny = next(it2)
        assert torch.equal(nx, b[0]) and torch.equal(ny, b[1])
    with pytest.raises(ValueError, match="cannot resume the data stream: seq_len was 16, now 32"):
        RandomWindows(shards, 32, 4, seed=3).load_state_dict(state)


def _grid(shards, seq_len, offset):
    """Every window of seq_len + 1 tokens on the epoch's grid, as a Counter of bytes."""
    from collections import Counter
    c = Counter()
    for a in shards.arrays:
        a = np.asarray(a, dtype=np.int64)
        for st in range(offset, len(a) - seq_len, seq_len):
            c[a[st:st + seq_len + 1].tobytes()] += 1
    return c


def _win(x, y):
    return [torch.cat([xi, yi[-1:]]).numpy().tobytes() for xi, yi in zip(x, y)]


def test_random_windows_epoch_covers_every_window_once(prepared):
    from collections import Counter
    shards = TokenShards(prepared[3], "train")
    it = RandomWindows(shards, seq_len=8, batch_size=1, seed=0)
    n = it.windows_per_epoch()
    got = Counter()
    for _ in range(n):
        got.update(_win(*next(it)))
    assert it.epoch == 1 and it.pos == 0
    assert got == _grid(shards, 8, it._epoch_layout(0)[2])
    assert sum(got.values()) > 50


def test_rank_streams_are_disjoint(prepared):
    from collections import Counter
    shards = TokenShards(prepared[3], "train")
    world, bs = 3, 2
    its = [RandomWindows(shards, 8, bs, seed=5, rank=r, world_size=world) for r in range(world)]
    steps = its[0].windows_per_epoch() // (bs * world)
    per_rank = [Counter() for _ in range(world)]
    for _ in range(steps):
        for r, it in enumerate(its):
            per_rank[r].update(_win(*next(it)))
    union = sum(per_rank, Counter())
    grid = _grid(shards, 8, its[0]._epoch_layout(0)[2])
    assert sum(union.values()) == steps * bs * world
    assert not (union - grid)        # no window is used more often than it exists in the epoch
    assert per_rank[0] != per_rank[1]
    with pytest.raises(ValueError, match="rank 3 must be in"):
        RandomWindows(shards, 8, 2, rank=3, world_size=3)


def test_eval_windows_sequential(prepared):
    shards = TokenShards(prepared[3], "valid")
    ev = EvalWindows(shards, seq_len=8, batch_size=3)
    batches = list(ev)
    assert len(batches) == len(ev) and list(ev)[0][0].tolist() == batches[0][0].tolist()
    xs = torch.cat([b[0] for b in batches])
    expected = sum((len(a) - 1) // 8 for a in shards.arrays)
    assert xs.shape == (expected, 8)
    first = np.asarray(shards.arrays[0])
    assert xs[0].tolist() == first[:8].tolist() and xs[1].tolist() == first[8:16].tolist()
    assert len(list(EvalWindows(shards, 8, 3, max_batches=1))) == 1
    with pytest.raises(ShardError, match="shorter than one window"):
        EvalWindows(shards, seq_len=10 ** 7, batch_size=1)
    with pytest.raises(ShardError, match="no shard holds seq_len"):
        RandomWindows(shards, seq_len=10 ** 7, batch_size=1)


def test_pipeline_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(InputError, match="no such file"):
        prepare_text(inputs=[str(tmp_path / "missing" / "*.txt")], out_dir=tmp_path / "p", **QUIET)
    (tmp_path / "en.txt").write_text("English only, nothing else in this document at all.\n", encoding="utf-8")
    with pytest.raises(EmptyCorpusError, match="no text left after"):
        prepare_text(inputs=[str(tmp_path / "en.txt")], out_dir=tmp_path / "p", **QUIET)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(EmptyCorpusError, match="no documents"):
        prepare_text(inputs=[str(tmp_path / "empty.txt")], out_dir=tmp_path / "p", **QUIET)
    with pytest.raises(FileNotFoundError, match="run the text stage first"):
        tokenize_splits(tiny_tokenizer.path, tmp_path / "nothing", tmp_path / "t", progress=False, **QUIET)


def test_token_stage_reads_chunks_in_pieces(prepared, tiny_tokenizer, tmp_path, monkeypatch):
    """A worker encodes its chunk piece by piece (bounded memory): same shards as whole chunks."""
    from kr_mini_llm.data import pipeline
    toks = prepared[3]
    monkeypatch.setattr(pipeline, "_PIECE", 97)        # pieces far smaller than a document
    small = tmp_path / "small"
    tokenize_splits(tiny_tokenizer.path, prepared[2], small, num_proc=1, shard_size_mb=0.004, progress=False, **QUIET)
    names = sorted(p.name for p in toks.glob("*.bin"))
    assert names == sorted(p.name for p in small.glob("*.bin"))
    for n in names:
        assert (small / n).read_bytes() == (toks / n).read_bytes()
