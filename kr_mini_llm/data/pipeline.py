"""The two stages of scripts/prepare_data.py, as functions (the script is a thin CLI).

prepare_text:    corpus (default Debian packages or --input) -> clean -> split ->
                 <processed>/{train,valid,test}.txt (documents separated by a blank line,
                 one paragraph per line) + <processed>/meta.json (config, per-step stats).
tokenize_splits: processed splits -> token shards + meta.json, in parallel processes, skipping
                 shards whose header already matches (same tokenizer, same text chunk).
Both skip their work when rerun with the same inputs and settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .cleaning import CleanConfig, CleanStats, EmptyCorpusError, clean_documents
from .readers import ReadStats, expand_inputs, read_documents
from .shards import ShardError, dtype_for_vocab, read_header, write_meta, write_shard
from .split import SPLITS, split_documents

__all__ = ["prepare_text", "tokenize_splits", "DOC_SEPARATOR"]

DOC_SEPARATOR = "\n\n"
PROCESSED_META = "meta.json"


def _input_signature(files) -> List:
    sig = []
    for f in files:
        if isinstance(f, Path):
            st = f.stat()
            sig.append([str(f), st.st_size, int(st.st_mtime)])
        else:
            sig.append([str(f)])
    return sig


def prepare_text(inputs: Optional[Sequence[str]] = None, sources: Optional[Sequence[str]] = None,
                 raw_dir="data/raw", out_dir="data/processed", clean: Optional[CleanConfig] = None,
                 ratios=(0.98, 0.01, 0.01), seed: int = 1234, text_field: str = "text",
                 force: bool = False, log=print) -> Dict:
    """Run the text stage; returns the processed meta dict (also written to out_dir/meta.json)."""
    from .sources import DEFAULT_SOURCES, obtain_sources

    clean = clean or CleanConfig()
    out_dir = Path(out_dir)
    if inputs:
        source = {"inputs": [str(i) for i in inputs]}
        files = expand_inputs(inputs)
    else:
        names = list(sources or DEFAULT_SOURCES)
        files = obtain_sources(names, raw_dir, log=log)
        source = {"debian_packages": names, "licences": [str(Path(raw_dir) / f"{n}.copyright") for n in names]}
    config = {"source": source, "files": _input_signature(files), "clean": clean.to_dict(),
              "ratios": list(ratios), "seed": seed, "text_field": text_field}
    meta_path = out_dir / PROCESSED_META
    if not force and meta_path.is_file() and all((out_dir / f"{s}.txt").is_file() for s in SPLITS):
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("config") == config:
            log(f"[prepare] {out_dir}/{{train,valid,test}}.txt are up to date (same inputs and settings); --force redoes them")
            return old
    t0 = time.perf_counter()
    rstats, cstats = ReadStats(), CleanStats()
    docs = [d.text for d in read_documents(files, text_field=text_field, stats=rstats)]
    log(f"[prepare] {rstats.summary()}")
    if not docs:
        raise EmptyCorpusError(f"no documents in the input ({rstats.files} files, {rstats.empty_files} empty)")
    docs = clean_documents(docs, clean, cstats)
    log("[prepare] cleaning:\n" + cstats.table())
    parts = split_documents(docs, ratios, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_info = {}
    for s in SPLITS:
        text = DOC_SEPARATOR.join(parts[s]) + ("\n" if parts[s] else "")
        tmp = out_dir / f"{s}.txt.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / f"{s}.txt")
        split_info[s] = {"documents": len(parts[s]), "chars": sum(map(len, parts[s])),
                         "bytes": sum(len(d.encode("utf-8")) for d in parts[s])}
    meta = {"config": config, "read": {"files": rstats.files, "documents": rstats.documents,
                                       "empty_files": rstats.empty_files, "invalid_utf8": rstats.invalid_utf8},
            "clean_steps": cstats.to_list(), "splits": split_info, "split_seed": seed,
            "seconds": round(time.perf_counter() - t0, 2)}
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log("[prepare] " + ", ".join(f"{s}: {v['documents']:,} docs {v['bytes'] / 1e6:.2f} MB" for s, v in split_info.items())
        + f" -> {out_dir}")
    return meta


# ----------------------------------------------------------------------------- tokens
def _plan_chunks(data: bytes, target: int):
    """Byte ranges [start, end) cut at document separators, each about `target` bytes."""
    sep = DOC_SEPARATOR.encode()
    chunks, start, n = [], 0, len(data)
    while start < n:
        end = n if n - start <= target else data.find(sep, start + target)
        end = n if end < 0 else end + len(sep)
        chunks.append((start, end))
        start = end
    return chunks


_WORKER_TOK = None


def _worker_init(tokenizer_path):
    global _WORKER_TOK
    from .tokenizer import Tokenizer
    _WORKER_TOK = Tokenizer(tokenizer_path, num_threads=1)


def _encode_chunk(job):
    path, start, end, out_path, src_fp, dtype_name = job
    tok = _WORKER_TOK
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    docs = [d for d in data.decode("utf-8").split(DOC_SEPARATOR) if d.strip()]
    docs = [d[:-1] if d.endswith("\n") else d for d in docs]
    ids = tok.encode(docs) if docs else []
    dtype = np.dtype(dtype_name)
    n = sum(len(x) + 2 for x in ids)
    arr = np.empty(n, dtype=dtype)
    pos = 0
    for x in ids:
        arr[pos] = tok.bos_id
        arr[pos + 1:pos + 1 + len(x)] = x
        arr[pos + 1 + len(x)] = tok.eos_id
        pos += len(x) + 2
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    write_shard(out_path, arr, nbytes, tok.fingerprint, src_fp)
    return out_path, n, nbytes, end - start, len(docs)


def tokenize_splits(tokenizer_path, processed_dir="data/processed", out_dir="data/tokens",
                    num_proc: Optional[int] = None, shard_size_mb: float = 64.0, force: bool = False,
                    progress: bool = True, log=print) -> Dict:
    """Encode the processed splits into token shards under out_dir; returns meta (+ 'timing')."""
    from tqdm import tqdm
    from .tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    processed_dir, out_dir = Path(processed_dir), Path(out_dir)
    pmeta_path = processed_dir / PROCESSED_META
    pmeta = json.loads(pmeta_path.read_text(encoding="utf-8")) if pmeta_path.is_file() else {}
    dtype = dtype_for_vocab(tok.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, done, plan = [], {}, {}
    for s in SPLITS:
        path = processed_dir / f"{s}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} not found; run the text stage first (scripts/prepare_data.py)")
        data = path.read_bytes()
        plan[s] = []
        for i, (a, b) in enumerate(_plan_chunks(data, max(1, int(shard_size_mb * 1e6)))):
            src_fp = hashlib.blake2b(data[a:b], digest_size=8).hexdigest()
            out = out_dir / f"{s}_{i:05d}.bin"
            plan[s].append(out.name)
            if not force and out.is_file():
                try:
                    h = read_header(out)
                    if h.tokenizer_fingerprint == tok.fingerprint and h.source_fingerprint == src_fp and h.itemsize == dtype.itemsize:
                        done[out.name] = (h.num_tokens, h.num_bytes)
                        continue
                except ShardError:
                    pass
            jobs.append((str(path), a, b, str(out), src_fp, dtype.name))
        for stale in out_dir.glob(f"{s}_*.bin"):
            if stale.name not in plan[s]:
                stale.unlink()
    total = sum(b - a for _, a, b, *_ in jobs)
    num_proc = max(1, min(num_proc or os.cpu_count() or 1, len(jobs) or 1))
    if done:
        log(f"[tokens] {len(done)} shards already up to date, {len(jobs)} to write")
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenize ({num_proc} proc)", disable=not progress or not jobs)
    if jobs and num_proc == 1:
        _worker_init(str(tok.path))
        results = []
        for job in jobs:
            results.append(_encode_chunk(job))
            bar.update(results[-1][3])
    elif jobs:
        import multiprocessing as mp
        ctx = mp.get_context("spawn" if os.name != "posix" else "fork")
        results = []
        with ctx.Pool(num_proc, initializer=_worker_init, initargs=(str(tok.path),)) as pool:
            for r in pool.imap_unordered(_encode_chunk, jobs):
                results.append(r)
                bar.update(r[3])
    else:
        results = []
    bar.close()
    seconds = time.perf_counter() - t0
    for out_path, n, nbytes, _, _ in results:
        done[Path(out_path).name] = (n, nbytes)
    splits = {}
    for s in SPLITS:
        shards = [{"file": name, "tokens": done[name][0], "bytes": done[name][1]} for name in plan[s]]
        splits[s] = {"tokens": sum(x["tokens"] for x in shards), "bytes": sum(x["bytes"] for x in shards),
                     "documents": pmeta.get("splits", {}).get(s, {}).get("documents"), "shards": shards}
    meta = {
        "format": "kr-mini-llm token shards", "format_version": 1, "dtype": dtype.name, "header_bytes": 64,
        "doc_format": "bos + tokens + eos per document",
        "tokenizer": {"path": str(tok.path), "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
                      "pad_id": tok.pad_id, "unk_id": tok.unk_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                      "im_start_id": tok.im_start_id, "im_end_id": tok.im_end_id},
        "source": pmeta.get("config", {}).get("source"), "split_seed": pmeta.get("split_seed"),
        "splits": splits,
    }
    write_meta(out_dir, meta)
    mbps = total / 1e6 / seconds if jobs and seconds > 0 else None
    log(f"[tokens] " + ", ".join(f"{s}: {v['tokens']:,} tokens" for s, v in splits.items())
        + (f"; {total / 1e6:.2f} MB in {seconds:.2f} s = {mbps:.2f} MB/s with {num_proc} processes" if jobs else "; nothing to do")
        + f" -> {out_dir}")
    meta["timing"] = {"bytes": total, "seconds": seconds, "num_proc": num_proc, "mb_per_s": mbps}
    return meta
