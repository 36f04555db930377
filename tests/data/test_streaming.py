"""The streaming text stage against the in-memory reference (tests/data/reference_pipeline.py):
same documents, same per-step counts, whatever the batch size, worker count or engine; its
dedup state against plain Python sets/dicts; memory that does not grow with the input."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kr_mini_llm.data import dedup
from kr_mini_llm.data.dedup import MinHasher, SortedRuns
from kr_mini_llm.data.pipeline import prepare_text
from kr_mini_llm.data.readers import read_documents
from . import reference_pipeline as ref
from .conftest import korean_doc

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(log=lambda *a: None)


def _corpus(d: Path, n: int, seed: int):
    """n Korean documents over a .txt and a .jsonl, with exact copies, near copies (one word
    changed), English and too-short documents mixed in."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        r = rng.random()
        if docs and r < 0.1:
            docs.append(rng.choice(docs))
        elif docs and r < 0.2:
            base = rng.choice(docs)
            docs.append(base.replace("어제", "그제", 1) if "어제" in base else base + " 끝.")
        elif r < 0.23:
            docs.append("English only paragraph that the Hangul filter must drop entirely.\n" * 2)
        elif r < 0.25:
            docs.append("짧은 문서.")
        else:
            docs.append(korean_doc(rng))
    d.mkdir(parents=True, exist_ok=True)
    half = n // 2
    (d / "a.txt").write_text("\n\n".join(docs[:half]) + "\n", encoding="utf-8")
    with open(d / "b.jsonl", "w", encoding="utf-8") as f:
        for t in docs[half:]:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return d


def _splits(out):
    return {s: [t.strip("\n") for t in (out / f"{s}.txt").read_text(encoding="utf-8").split("\n\n") if t.strip()]
            for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("stream") / "raw", 900, seed=5)


def _run(corpus, out, **kw):
    kw.setdefault("max_memory_mb", 1)            # 64 KB batches: many batches, cross-batch dedup
    return prepare_text(inputs=[str(corpus)], out_dir=out, ratios=(0.8, 0.1, 0.1), seed=3, **QUIET, **kw)


def test_streaming_equals_in_memory_reference(corpus, tmp_path):
    meta = _run(corpus, tmp_path / "p", num_proc=2)
    raw = [d.text for d in read_documents([corpus])]
    want, counts = ref.clean(raw)
    got = _splits(tmp_path / "p")
    assert sorted(sum(got.values(), [])) == sorted(want)
    for s, docs in got.items():            # each split keeps the corpus order
        pos = [want.index(d) for d in docs]
        assert pos == sorted(pos) and docs
    assert [s["documents"] for s in meta["clean_steps"]] == counts
    assert counts[3] > counts[4] > counts[5]                  # both dedups had work
    assert meta["splits"]["valid"]["bytes"] == sum(len(d.encode()) for d in got["valid"])


def test_same_output_for_any_worker_count(corpus, tmp_path):
    _run(corpus, tmp_path / "a", num_proc=1, max_memory_mb=4096)
    _run(corpus, tmp_path / "b", num_proc=2)
    for s in ("train", "valid", "test"):
        assert (tmp_path / "a" / f"{s}.txt").read_bytes() == (tmp_path / "b" / f"{s}.txt").read_bytes()


def test_dask_engine_equals_local(corpus, tmp_path):
    pytest.importorskip("distributed", reason="dask[distributed] is in the test extra")
    _run(corpus, tmp_path / "local", num_proc=2)
    _run(corpus, tmp_path / "dask", num_proc=2, engine="dask")
    for s in ("train", "valid", "test", ):
        assert (tmp_path / "dask" / f"{s}.txt").read_bytes() == (tmp_path / "local" / f"{s}.txt").read_bytes()


def test_minhash_segments_equal_whole_document(monkeypatch):
    rng = random.Random(1)
    docs = [korean_doc(rng, paragraphs=40) for _ in range(3)] + ["가", "", korean_doc(rng)]
    want = ref.minhash_signatures(docs).astype(np.uint32)
    assert np.array_equal(MinHasher()(docs), want)
    monkeypatch.setattr(dedup, "_SEGMENT", 97)          # long documents cut in many segments
    assert np.array_equal(MinHasher()(docs), want)


def test_sorted_runs_multimap_matches_dict():
    rng = np.random.default_rng(0)
    runs, d = SortedRuns(np.uint32), {}
    for step in range(40):
        keys = rng.integers(0, 300, rng.integers(1, 50)).astype(np.uint32)
        vals = np.arange(step * 100, step * 100 + len(keys), dtype=np.uint32)
        q = rng.integers(0, 300, 64).astype(np.uint32)
        qi, got = runs.lookup(q)
        pairs = sorted(zip(qi.tolist(), got.tolist()))
        assert pairs == sorted((i, v) for i, k in enumerate(q.tolist()) for v in d.get(k, []))
        runs.add(keys, vals)
        for k, v in zip(keys.tolist(), vals.tolist()):
            d.setdefault(k, []).append(v)
    assert len(runs.runs) <= 8 and len(runs) == sum(map(len, d.values()))


_PEAK = """
import resource, sys, types
pkg = types.ModuleType("kr_mini_llm")     # the data package alone: skip the model package's torch import
pkg.__path__ = [sys.argv[3]]
sys.modules["kr_mini_llm"] = pkg
from kr_mini_llm.data.pipeline import prepare_text
prepare_text(inputs=[sys.argv[1]], out_dir=sys.argv[2], num_proc=1, max_memory_mb=64, log=lambda *a: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_memory_does_not_grow_with_the_input(tmp_path):
    """Peak RSS of the whole text stage (one process) for a corpus and for twice that corpus."""
    rng = random.Random(0)
    block = "\n\n".join(korean_doc(rng, paragraphs=4) for _ in range(2000)) + "\n\n"   # ~1.5 MB
    peaks, sizes = [], []
    for n in (4, 8):
        f = tmp_path / f"c{n}.txt"
        with open(f, "w", encoding="utf-8") as fh:
            for i in range(n):       # distinct blocks: every document survives dedup
                fh.write(block.replace("습니다.", f"습니다{i}.", 1 + i))
        sizes.append(f.stat().st_size)
        r = subprocess.run([sys.executable, "-c", _PEAK, str(f), str(tmp_path / f"o{n}"), str(REPO / "kr_mini_llm")],
                           capture_output=True,
                           text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        peaks.append(int(r.stdout.split()[-1]))
    # the in-memory pipeline grew by ~9x the added input; streaming by the dedup state only
    assert peaks[1] - peaks[0] < 0.2 * (sizes[1] - sizes[0]), (peaks, sizes)


_GROWTH = """
import resource, sys, types
pkg = types.ModuleType("kr_mini_llm")
pkg.__path__ = [sys.argv[3]]
sys.modules["kr_mini_llm"] = pkg
from kr_mini_llm.data.pipeline import prepare_text
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepare_text(inputs=[sys.argv[1]], out_dir=sys.argv[2], num_proc=1, log=lambda *a: None)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("name", ["one_line.txt", "one_record.jsonl"])
def test_one_long_document_costs_a_small_multiple_of_its_size(tmp_path, name):
    """A single 12 MB document (one line of text, one JSON record): the text stage's peak memory
    grows by less than 6x its size (every copy made while cleaning, hashing and writing counts)."""
    rng = random.Random(1)
    text = " ".join(korean_doc(rng, paragraphs=1, sentences=1) + f" {i}" for i in range(160_000))
    f = tmp_path / name
    f.write_text(json.dumps({"text": text}, ensure_ascii=False) if name.endswith(".jsonl") else text, encoding="utf-8")
    size = f.stat().st_size
    r = subprocess.run([sys.executable, "-c", _GROWTH, str(f), str(tmp_path / "out"), str(REPO / "kr_mini_llm")],
                       capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    growth = int(r.stdout.split()[-1])
    assert size > 10e6 and growth < 6 * size, (growth / size, size)
