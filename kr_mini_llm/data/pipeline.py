"""The two stages of scripts/prepare_data.py, as functions (the script is a thin CLI).

prepare_text:    corpus (default Debian packages or --input) -> clean -> dedup -> split ->
                 <processed>/{train,valid,test}.txt (documents separated by a blank line,
                 one paragraph per line) + <processed>/meta.json (config, per-step stats).
tokenize_splits: processed splits -> token shards + meta.json, in parallel processes, skipping
                 shards whose header already matches (same tokenizer, same text chunk).
Both stream: documents flow reader -> worker processes (markup, cleaning, hashes, MinHash) ->
parent (dedup decisions in corpus order, split, append to the output), so memory does not grow
with the corpus beyond the compact dedup state (see dedup.py), and the output does not depend
on the number of workers. Both skip their work when rerun with the same inputs and settings.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..io.atomic import atomic_write_text, created_directory
from ..io.outputs import OVERWRITE_FLAG, OutputError, check_not_input
from .cleaning import CleanConfig, CleanStats, clean_many, step_names
from .dedup import ExactDupIndex, MinHasher, NearDupIndex, band_keys, doc_hash
from .parallel import default_workers, ordered_map
from .readers import ReadStats, expand_inputs, read_documents, strip_markup
from .shards import ShardError, ShardWriter, dtype_for_vocab, read_header, write_meta
from .split import SPLITS, auto_ratios
from .utf8 import utf8_len, utf8_pieces

__all__ = ["prepare_text", "tokenize_splits", "DOC_SEPARATOR", "DEFAULT_MAX_MEMORY_MB"]

DOC_SEPARATOR = "\n\n"
PROCESSED_META = "meta.json"
SPLIT_METHOD = "per document: blake2b(text) with the seed -> train/valid/test by the ratios"
DEFAULT_MAX_MEMORY_MB = 2048


def _input_signature(files) -> List:
    sig = []
    for f in files:
        if isinstance(f, Path):
            st = f.stat()
            sig.append([str(f), st.st_size, int(st.st_mtime)])
        else:
            sig.append([str(f)])
    return sig


# ----------------------------------------------------------------------------- text
def _batches(docs, batch_bytes: int) -> Iterator[tuple]:
    texts, markups, size = [], [], 0
    for d in docs:
        texts.append(d.text)
        markups.append(d.markup)
        size += len(d.text)
        if size >= batch_bytes:
            yield texts, markups
            texts, markups, size = [], [], 0
    if texts:
        yield texts, markups


_CLEAN = None


def _clean_init(cfg_dict):
    global _CLEAN
    cfg = CleanConfig(**cfg_dict)
    _CLEAN = (cfg, MinHasher() if cfg.near_dedup else None)


def _clean_batch(batch):
    """Worker: markup -> per-document cleaning (+ per-step counts) -> exact keys, signatures."""
    cfg, minhash = _CLEAN
    texts = [strip_markup(t, m) for t, m in zip(*batch)]
    texts = [t for t, m in zip(texts, batch[1]) if m != "wikitext" or t.strip()]
    kept, counts = clean_many(texts, cfg)
    lens = np.array([(len(t), utf8_len(t)) for t in kept], np.int64).reshape(-1, 2)
    keys = np.fromiter((doc_hash(t) for t in kept), np.uint64, len(kept))
    sigs = minhash(kept) if minhash is not None and kept else None
    bands = band_keys(sigs, NearDupIndex.BANDS) if sigs is not None else None
    return counts, kept, lens, keys, (sigs, bands)


def _split_of(keys: np.ndarray, ratios, seed: int) -> np.ndarray:
    """0 train, 1 valid, 2 test: a hash of the document and the seed against the ratios."""
    with np.errstate(over="ignore"):
        h = keys.astype(np.uint64) ^ (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        for c in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):     # splitmix64 finaliser
            h ^= h >> np.uint64(30)
            h *= np.uint64(c)
        h ^= h >> np.uint64(31)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    r = np.asarray(ratios, float) / sum(ratios)
    return np.where(u < r[1], 1, np.where(u < r[1] + r[2], 2, 0))


class _SplitWriter:
    """Appends documents to <split>.txt.tmp files; `commit` renames them into place together."""
    SEP = DOC_SEPARATOR.encode()

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files = {s: open(out_dir / f"{s}.txt.tmp", "wb", buffering=1 << 20) for s in SPLITS}
        self.info = {s: {"documents": 0, "chars": 0, "bytes": 0} for s in SPLITS}
        self.tail: List[tuple] = []        # (offset, text) of the last two train documents

    def write(self, split: str, text: str):
        f, info = self.files[split], self.info[split]
        if info["documents"]:
            f.write(self.SEP)
        if split == "train":
            offset = info["bytes"] + len(self.SEP) * info["documents"]
            self.tail = (self.tail + [(offset, text)])[-2:]
        for piece in utf8_pieces(text):          # a long document is never encoded whole
            f.write(piece)
            info["bytes"] += len(piece)
        info["documents"] += 1
        info["chars"] += len(text)

    def ensure_nonempty(self, ratios):
        """A small corpus may hash no document into valid or test: give each the last train one."""
        for s, r in (("valid", ratios[1]), ("test", ratios[2])):
            train = self.info["train"]
            if r > 0 and not self.info[s]["documents"] and train["documents"] >= 3 and self.tail:
                off, text = self.tail.pop()
                f = self.files["train"]
                f.flush()
                f.truncate(off - len(self.SEP) if train["documents"] > 1 else 0)
                f.seek(0, os.SEEK_END)
                train["documents"] -= 1
                train["chars"] -= len(text)
                train["bytes"] -= utf8_len(text)
                self.write(s, text)

    def commit(self):
        for s, f in self.files.items():
            if self.info[s]["documents"]:
                f.write(b"\n")
            f.close()
        for s in SPLITS:
            os.replace(self.out_dir / f"{s}.txt.tmp", self.out_dir / f"{s}.txt")

    def abort(self):
        for s, f in self.files.items():
            f.close()
            (self.out_dir / f"{s}.txt.tmp").unlink(missing_ok=True)


def _refuse_foreign(out_dir: Path, outputs, overwrite: bool, flag: str) -> None:
    """Outputs found in out_dir without the meta.json a run of ours writes beside them were made by
    someone else: replaced only with --overwrite (a rerun replaces its own outputs freely)."""
    found = [p for p in outputs if p.exists()]
    if found and not overwrite and not (out_dir / PROCESSED_META).is_file():
        raise OutputError(f"{found[0]} already exists and was not written by prepare_data.py (no "
                          f"{PROCESSED_META} beside it); choose another {flag}, or pass {OVERWRITE_FLAG} to "
                          "replace it")


def prepare_text(inputs: Optional[Sequence[str]] = None, sources: Optional[Sequence[str]] = None,
                 raw_dir="data/raw", out_dir="data/processed", clean: Optional[CleanConfig] = None,
                 ratios=None, seed: int = 1234, text_field: str = "text",
                 force: bool = False, log=print, num_proc: Optional[int] = None,
                 max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, engine: str = "local",
                 engine_address: Optional[str] = None, encoding: Optional[str] = None,
                 overwrite: bool = False) -> Dict:
    """Run the text stage; returns the processed meta dict (also written to out_dir/meta.json).

    num_proc: worker processes (default: every core); engine: "local" (process pool) or "dask"
    (engine_address = a Dask scheduler, else a local Dask cluster); max_memory_mb sizes the
    in-flight batches. The output is the same whatever these three are. encoding: the input
    files' text encoding (default: found per file, see readers.py). A failed run leaves the
    output as it was: the splits are renamed into place at the end, and a directory it made is
    removed. ratios: (train, valid, test) fractions, None for split.auto_ratios of the input's size.
    Split files that an earlier run did not write (no meta.json beside them) are replaced
    only with `overwrite`; out_dir may not be or lie inside an input."""
    from .sources import DEFAULT_SOURCES, obtain_sources

    clean = clean or CleanConfig()
    out_dir = Path(out_dir)
    check_not_input(out_dir, inputs or [], "--output_dir", replaces=False)
    _refuse_foreign(out_dir, [out_dir / f"{s}.txt" for s in SPLITS], overwrite, "--output_dir")
    if inputs:
        source = {"inputs": [str(i) for i in inputs]}
        files = expand_inputs(inputs)
    else:
        names = list(sources or DEFAULT_SOURCES)
        files = obtain_sources(names, raw_dir, log=log)
        source = {"debian_packages": names, "licences": [str(Path(raw_dir) / f"{n}.copyright") for n in names]}
    signature = _input_signature(files)
    if ratios is None:
        ratios = auto_ratios(sum(f[1] for f in signature) if all(len(f) > 1 for f in signature) else None)
    config = {"source": source, "files": signature, "clean": clean.to_dict(),
              "ratios": list(ratios), "seed": seed, "split_method": SPLIT_METHOD, "text_field": text_field}
    if encoding:
        config["encoding"] = encoding
    meta_path = out_dir / PROCESSED_META
    if not force and meta_path.is_file() and all((out_dir / f"{s}.txt").is_file() for s in SPLITS):
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("config") == config:
            log(f"[prepare] {out_dir}/{{train,valid,test}}.txt are up to date (same inputs and settings); --force redoes them")
            return old
    t0 = time.perf_counter()
    num_proc = num_proc or default_workers()
    inflight = 2 * num_proc
    # each in-flight batch costs about 8x its text across parent, pipe and worker; 1 MB batches
    # keep the workers' arrays in cache, a small budget makes them smaller
    batch_bytes = int(min(1 << 20, max(16 << 10, max_memory_mb * 2 ** 20 / 4 / (8 * inflight))))
    rstats = ReadStats()
    names = step_names(clean)
    counts = np.zeros((len(names), 3), np.int64)
    exact = ExactDupIndex() if clean.dedup else None
    with created_directory(out_dir):
        near = NearDupIndex(clean.near_dup_threshold, tmp_dir=str(out_dir)) if clean.near_dedup else None
        writer = _SplitWriter(out_dir)
        try:
            docs = read_documents(files, text_field=text_field, stats=rstats, raw_markup=True,
                                  encoding=encoding)
            for c, kept, lens, keys, sigs in ordered_map(_clean_batch, _batches(docs, batch_bytes), num_proc,
                                                   inflight, engine, engine_address, _clean_init, (clean.to_dict(),)):
                counts[:4] += c
                row = 4
                mask = np.ones(len(kept), bool)
                if exact is not None:
                    mask = exact.keep(keys)
                    counts[row] += (mask.sum(), *lens[mask].sum(axis=0))
                    row += 1
                if near is not None and mask.any():
                    idx = np.flatnonzero(mask)
                    mask[idx] = near.keep(sigs[0][idx], sigs[1][idx])
                    counts[row] += (mask.sum(), *lens[mask].sum(axis=0))
                idx = np.flatnonzero(mask)
                for i, sp in zip(idx.tolist(), _split_of(keys[idx], ratios, seed).tolist()):
                    writer.write(SPLITS[sp], kept[i])
            log(f"[prepare] {rstats.summary()}")
            cstats = CleanStats([(n, *map(int, c)) for n, c in zip(names, counts)])
            log("[prepare] cleaning:\n" + cstats.table())
            cstats.check()
            writer.ensure_nonempty(ratios)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            if near is not None:
                near.close()
        dedup_mb = ((exact.nbytes if exact else 0) + (near.nbytes if near else 0)) / 2 ** 20
        meta = {"config": config, "read": {"files": rstats.files, "documents": rstats.documents,
                                           "empty_files": rstats.empty_files, "invalid_utf8": rstats.invalid_utf8,
                                           "encodings": rstats.encodings},
                "clean_steps": cstats.to_list(), "splits": writer.info, "split_seed": seed,
                "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_text(meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log("[prepare] " + ", ".join(f"{s}: {v['documents']:,} docs {v['bytes'] / 1e6:.2f} MB" for s, v in writer.info.items())
        + f" -> {out_dir} ({num_proc} workers, {engine}; dedup state {dedup_mb:.1f} MB)")
    return meta


# ----------------------------------------------------------------------------- tokens
_SEP = DOC_SEPARATOR.encode()
_PIECE = 4 << 20                    # text a worker decodes and encodes at once


def _find_from(f, pos: int, size: int) -> int:
    """End (exclusive) of the first separator at or after byte `pos`, or `size`."""
    while pos < size:
        f.seek(pos)
        block = f.read(1 << 20)
        i = block.find(_SEP)
        if i >= 0:
            return pos + i + len(_SEP)
        pos += max(1, len(block) - len(_SEP) + 1)
    return size


def _plan_chunks(path: Path, target: int):
    """Byte ranges [start, end) of a split file cut at document separators, each about `target`
    bytes; found by seeking, never by reading the file whole."""
    size = path.stat().st_size
    chunks, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            end = size if size - start <= target else _find_from(f, start + target, size)
            chunks.append((start, end))
            start = end
    return chunks


def _pieces(f, start: int, end: int):
    """The bytes of [start, end) in pieces of about _PIECE bytes cut at separators."""
    f.seek(start)
    carry, remaining = b"", end - start
    while remaining:
        block = f.read(min(_PIECE, remaining))
        if not block:
            raise ShardError(f"{f.name} changed while it was being read; rerun")
        remaining -= len(block)
        buf = carry + block
        cut = len(buf) if not remaining else buf.rfind(_SEP)
        if cut < 0:
            carry = buf
            continue
        cut = cut if not remaining else cut + len(_SEP)
        yield buf[:cut]
        carry = buf[cut:]
    if carry:
        yield carry


_WORKER_TOK = None


def _worker_init(tokenizer_path):
    global _WORKER_TOK
    from .tokenizer import Tokenizer
    _WORKER_TOK = Tokenizer(tokenizer_path, num_threads=1)


def _encode_docs(tok, docs: List[str]) -> np.ndarray:
    """bos + ids + eos for each document, flat, int64."""
    ids = tok.encode(docs)
    lens = np.fromiter(map(len, ids), np.int64, len(ids))
    total = int(lens.sum())
    flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, total)
    arr = np.empty(total + 2 * len(ids), np.int64)
    ends = np.cumsum(lens + 2)
    arr[ends - lens - 2] = tok.bos_id
    arr[ends - 1] = tok.eos_id
    arr[np.arange(total) + 2 * np.repeat(np.arange(len(ids)), lens) + 1] = flat
    return arr


def _encode_chunk(job):
    """Worker: keep a shard whose header matches the chunk's fingerprint, else encode the chunk
    piece by piece into the shard (memory: one piece, not the chunk)."""
    path, start, end, out_path, dtype_name, force = job
    tok = _WORKER_TOK
    with open(path, "rb") as f:
        if not force and os.path.isfile(out_path):     # hash first: the shard may be up to date
            h = hashlib.blake2b(digest_size=8)
            for piece in _pieces(f, start, end):
                h.update(piece)
            try:
                hdr = read_header(out_path)
                if (hdr.tokenizer_fingerprint, hdr.source_fingerprint, hdr.itemsize) == (
                        tok.fingerprint, h.hexdigest(), np.dtype(dtype_name).itemsize):
                    return out_path, hdr.num_tokens, hdr.num_bytes, end - start, False
            except ShardError:
                pass
        h = hashlib.blake2b(digest_size=8)
        w = ShardWriter(out_path, dtype_name, tok.fingerprint)
        try:
            for piece in _pieces(f, start, end):
                h.update(piece)
                docs = [d[:-1] if d.endswith(b"\n") else d for d in piece.split(_SEP) if d.strip()]
                if docs:
                    w.append(_encode_docs(tok, [d.decode("utf-8") for d in docs]), sum(map(len, docs)))
            w.source_fingerprint = h.hexdigest()
            w.close()
        except BaseException:
            w.abort()
            raise
    return out_path, w.num_tokens, w.num_bytes, end - start, True


def tokenize_splits(tokenizer_path, processed_dir="data/processed", out_dir="data/tokens",
                    num_proc: Optional[int] = None, shard_size_mb: float = 64.0, force: bool = False,
                    progress: bool = True, log=print, overwrite: bool = False) -> Dict:
    """Encode the processed splits into token shards under out_dir; returns meta (+ 'timing').
    One task per shard-sized chunk, on `num_proc` processes (default: every core)."""
    from tqdm import tqdm
    from .tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    processed_dir, out_dir = Path(processed_dir), Path(out_dir)
    check_not_input(out_dir, [processed_dir, tokenizer_path], "--tokens_dir", replaces=False)
    _refuse_foreign(out_dir, sorted(out_dir.glob("*.bin")) if out_dir.is_dir() else [], overwrite, "--tokens_dir")
    pmeta_path = processed_dir / PROCESSED_META
    pmeta = json.loads(pmeta_path.read_text(encoding="utf-8")) if pmeta_path.is_file() else {}
    dtype = dtype_for_vocab(tok.vocab_size)
    with created_directory(out_dir):      # a failed run removes the directory it made
        jobs, plan = [], {}
        for s in SPLITS:
            path = processed_dir / f"{s}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{str(path)!r} not found; run the text stage first (scripts/prepare_data.py)")
            plan[s] = []
            for i, (a, b) in enumerate(_plan_chunks(path, max(1, int(shard_size_mb * 1e6)))):
                out = out_dir / f"{s}_{i:05d}.bin"
                plan[s].append(out.name)
                jobs.append((str(path), a, b, str(out), dtype.name, force))
            for stale in out_dir.glob(f"{s}_*.bin"):
                if stale.name not in plan[s]:
                    stale.unlink()
        jobs.sort(key=lambda j: j[1] - j[2])       # largest first: the last task is a short one
        total = sum(b - a for _, a, b, *_ in jobs)
        num_proc = max(1, min(num_proc or default_workers(), len(jobs) or 1))
        t0 = time.perf_counter()
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenize ({num_proc} proc)", disable=not progress or not jobs)
        done, encoded, kept = {}, 0, 0
        for out_path, n, nbytes, size, written in ordered_map(_encode_chunk, jobs, num_proc, len(jobs) or 1,
                                                              initializer=_worker_init, initargs=(str(tok.path),)):
            done[Path(out_path).name] = (n, nbytes)
            encoded += size if written else 0
            kept += not written
            bar.update(size)
        bar.close()
        seconds = time.perf_counter() - t0
        if kept:
            log(f"[tokens] {kept} shards already up to date, {len(jobs) - kept} written")
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
        mbps = encoded / 1e6 / seconds if encoded and seconds > 0 else None
        log("[tokens] " + ", ".join(f"{s}: {v['tokens']:,} tokens" for s, v in splits.items())
            + (f"; {encoded / 1e6:.2f} MB in {seconds:.2f} s = {mbps:.2f} MB/s with {num_proc} processes" if encoded
               else "; nothing to do") + f" -> {out_dir}")
    meta["timing"] = {"bytes": encoded, "seconds": seconds, "num_proc": num_proc, "mb_per_s": mbps}
    return meta
