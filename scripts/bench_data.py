#!/usr/bin/env python3
"""Data pipeline at scale: a synthetic Korean corpus of a given size through the text stage,
tokenizer training and the token stage, with wall time, MB/s and peak RSS per stage.

  python scripts/bench_data.py --size 300MB --output benchmarks/data_cpu_300MB.md
  python scripts/bench_data.py --size 1GB --work_dir /tmp/bench_data --output benchmarks/data_cpu_1GB.md

The corpus is recombined from the paragraphs of the default corpus (Debian packages, markup
stripped, English paragraphs included, so the cleaner has work): each document is 3-12 random
paragraphs; 5% of the documents are exact copies and 5% near copies (one sentence added) of a
recent document, so both dedups have work. It is written as 64 MB files, three .txt for one
.jsonl. Each stage runs in its own process; peak RSS is sampled every 0.1 s over that process
and its workers (the sum of their RSS, so pages shared by forked workers count more than once:
an upper bound) and also reported for the parent alone.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILE_BYTES = 64 << 20


def parse_size(s: str) -> int:
    s = s.strip().upper()
    for unit, mult in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)):
        if s.endswith(unit):
            return int(float(s[:-len(unit)]) * mult)
    return int(s)


def paragraph_pool(raw_dir: Path):
    from kr_mini_llm.data.sources import DEFAULT_SOURCES, obtain_sources
    files = obtain_sources(DEFAULT_SOURCES, raw_dir, log=lambda *a: None)
    pool = [ln for f in files for ln in f.read_text(encoding="utf-8").splitlines() if len(ln.strip()) >= 5]
    return pool


def build_corpus(out: Path, size: int, pool, seed: int = 0) -> dict:
    """Write ~`size` bytes of documents under `out`; returns counts of what was planted."""
    stamp = out.parent / f"{out.name}.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("size") == size and info.get("seed") == seed:
            return info
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part_*"):
        old.unlink()
    rng = random.Random(seed)
    recent = []
    written = n_docs = n_exact = n_near = 0
    part, f, f_bytes, jsonl = 0, None, 0, False
    while written < size:
        if f is None or f_bytes >= FILE_BYTES:
            if f:
                f.close()
            jsonl = part % 4 == 3
            f = open(out / f"part_{part:04d}.{'jsonl' if jsonl else 'txt'}", "w", encoding="utf-8")
            part, f_bytes = part + 1, 0
        r = rng.random()
        if recent and r < 0.05:
            doc = rng.choice(recent)
            n_exact += 1
        elif recent and r < 0.10:
            doc = rng.choice(recent) + "\n" + rng.choice(pool)[:60]
            n_near += 1
        else:
            doc = "\n".join(rng.choice(pool) for _ in range(rng.randint(3, 12)))
            recent = (recent + [doc])[-1000:]
        rec = json.dumps({"text": doc}, ensure_ascii=False) + "\n" if jsonl else doc + "\n\n"
        f.write(rec)
        nb = len(rec.encode("utf-8"))
        written += nb
        f_bytes += nb
        n_docs += 1
    f.close()
    info = {"size": size, "seed": seed, "bytes": written, "documents": n_docs, "exact_copies": n_exact,
            "near_copies": n_near, "files": part}
    stamp.write_text(json.dumps(info))
    return info


def run_stage(code: str, env_path: str, cwd: Path) -> dict:
    """Run `code` in a fresh Python; sample the RSS of it and its children; it prints a JSON line."""
    import psutil
    env = dict(os.environ, PYTHONPATH=env_path)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=cwd)
    proc = psutil.Process(p.pid)
    peak_tree = peak_parent = 0
    while p.poll() is None:
        try:
            rss_parent = proc.memory_info().rss
            kids = sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak_parent = max(peak_parent, rss_parent)
            peak_tree = max(peak_tree, rss_parent + kids)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"stage failed:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(peak_tree_mb=peak_tree / 2 ** 20, peak_parent_mb=peak_parent / 2 ** 20)
    return res


CPU = """
import resource
def cpu():  # user + system seconds of this process and its (joined) workers
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
"""
TEXT = CPU + """
import inspect, json, time
from kr_mini_llm.data.pipeline import prepare_text
kw = dict(num_proc={num_proc}) if "num_proc" in inspect.signature(prepare_text).parameters else {{}}  # --impl older
t = time.perf_counter()
m = prepare_text(inputs=[{corpus!r}], out_dir={out!r}, force=True, log=lambda *a: None, **kw)
s = time.perf_counter() - t
print(json.dumps(dict(seconds=s, cpu=cpu(), steps=m["clean_steps"], splits=m["splits"])))
"""
TOKENIZER = CPU + """
import json, time
from kr_mini_llm.data.tokenizer import train_tokenizer
t = time.perf_counter()
train_tokenizer([{train!r}], vocab_size={vocab}, output_prefix={prefix!r}, num_threads={num_proc})
print(json.dumps(dict(seconds=time.perf_counter() - t, cpu=cpu())))
"""
TOKENS = CPU + """
import json, time
from kr_mini_llm.data.pipeline import tokenize_splits
t = time.perf_counter()
m = tokenize_splits({model!r}, {processed!r}, {tokens!r}, num_proc={num_proc}, force=True, progress=False, log=lambda *a: None)
print(json.dumps(dict(seconds=time.perf_counter() - t, cpu=cpu(), tokens=sum(v["tokens"] for v in m["splits"].values()))))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="300MB", help="corpus size, e.g. 300MB, 1GB")
    ap.add_argument("--work_dir", default="/tmp/kr_bench_data", help="corpus, outputs and the raw-corpus cache")
    ap.add_argument("--num_proc", type=int, default=None, help="worker processes (default: every core)")
    ap.add_argument("--vocab_size", type=int, default=8000)
    ap.add_argument("--stages", default="text,tokenizer,tokens")
    ap.add_argument("--impl", default=str(ROOT), help="checkout whose kr_mini_llm is measured (PYTHONPATH)")
    ap.add_argument("--output", help="write the markdown report here")
    a = ap.parse_args(argv)

    from kr_mini_llm.data.parallel import default_workers
    from bench_common import cpu_name
    num_proc = a.num_proc or default_workers()
    size = parse_size(a.size)
    work = Path(a.work_dir)
    corpus = work / f"corpus_{a.size}"
    t0 = time.perf_counter()
    info = build_corpus(corpus, size, paragraph_pool(work / "raw"))
    print(f"corpus: {info['bytes'] / 1e6:,.0f} MB, {info['documents']:,} documents "
          f"({info['exact_copies']:,} exact and {info['near_copies']:,} near copies) in {info['files']} files "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    processed, model, tokens = work / f"processed_{a.size}", work / f"tok_{a.size}", work / f"tokens_{a.size}"
    stages = a.stages.split(",")
    rows = []
    if "text" in stages:
        r = run_stage(TEXT.format(corpus=str(corpus), out=str(processed), num_proc=num_proc), a.impl, work)
        rows.append(("text (read, clean, dedup, near-dedup, split, write)", info["bytes"], r))
        steps = {s["step"]: s["documents"] for s in r["steps"]}
        print("text:", json.dumps(steps, ensure_ascii=False), flush=True)
    train = processed / "train.txt"
    if "tokenizer" in stages:
        r = run_stage(TOKENIZER.format(train=str(train), vocab=a.vocab_size, prefix=str(model), num_proc=num_proc),
                      a.impl, work)
        rows.append((f"tokenizer training (vocab {a.vocab_size}, 2M sampled lines)", None, r))
    if "tokens" in stages:
        nbytes = sum((processed / f"{s}.txt").stat().st_size for s in ("train", "valid", "test"))
        r = run_stage(TOKENS.format(model=str(model) + ".model", processed=str(processed), tokens=str(tokens),
                                    num_proc=num_proc), a.impl, work)
        rows.append((f"tokens ({r['tokens']:,} tokens)", nbytes, r))
    lines = [f"# Data pipeline at {a.size}", "",
             f"Command: `python scripts/bench_data.py --size {a.size}" + (f" --num_proc {a.num_proc}" if a.num_proc else "")
             + (f" --stages {a.stages}" if a.stages != "text,tokenizer,tokens" else "")
             + (f" --impl {a.impl}" if Path(a.impl).resolve() != ROOT else "") + "`", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} CPUs visible, {num_proc} worker processes. "
             "Shared with other jobs while it ran: wall times are upper bounds.", "",
             f"Corpus: {info['bytes'] / 1e6:,.0f} MB, {info['documents']:,} documents, {info['exact_copies']:,} exact "
             f"and {info['near_copies']:,} near copies planted.", "",
             "CPU s = user + system time of the stage's process and its workers (includes start-up "
             "imports); MB/s on 2 idle cores is input MB / (CPU s / 2), what the stage would reach "
             "with both cores to itself.", "",
             "| stage | input MB | wall s | MB/s (wall) | CPU s | MB/s on 2 idle cores | peak RSS, parent "
             "| peak RSS, parent + workers (sum) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, nbytes, r in rows:
        mbps = f"{nbytes / 1e6 / r['seconds']:.1f}" if nbytes else "—"
        mb = f"{nbytes / 1e6:,.0f}" if nbytes else "—"
        idle = f"{nbytes / 1e6 / (r['cpu'] / 2):.1f}" if nbytes else "—"
        lines.append(f"| {name} | {mb} | {r['seconds']:.1f} | {mbps} | {r['cpu']:.1f} | {idle} "
                     f"| {r['peak_parent_mb']:,.0f} MB | {r['peak_tree_mb']:,.0f} MB |")
    if "text" in stages:
        lines += ["", "Text stage, documents after each step:", "", "| step | documents |", "|---|---|"]
        lines += [f"| {s['step']} | {s['documents']:,} |" for s in rows[0][2]["steps"]]
    lines += ["", f"Total benchmark time: {time.perf_counter() - t0:.0f} s"]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
