#!/usr/bin/env python3
"""Serving throughput: N concurrent streaming clients against scripts/serve.py (continuous batching).

    python scripts/bench_serve.py                              # -> benchmarks/serve_cpu.md
    python scripts/bench_serve.py --model checkpoints/demo --concurrency 1,8 --requests 16 --output /tmp/s.md
    python scripts/bench_serve.py --speculative prompt_lookup --num-draft-tokens 4   # + speculative columns

The server runs as its own process (scripts/serve.py, --max-batch = the largest concurrency);
clients are asyncio tasks speaking plain HTTP/1.1 with server-sent events. At each concurrency
N, N clients share a fixed list of requests (distinct prompts, greedy, fixed max_tokens), each
client sending its next request as soon as its last answer ends. Reported per level: requests/s,
output tokens/s (from `usage`), time to first token and latency (p50/p95 over requests), and a
check that every request got its own complete answer: a `finish_reason`, `usage` equal to the
tokens streamed, `data: [DONE]`, and the same text as when that prompt was served alone
(concurrency 1). Levels are interleaved over repeats; the table shows medians (by output tokens/s).
It also reports output tokens per second of the server's CPU time, steadier on a shared machine,
and the bare model's decode step at batch N against batch 1 (the ceiling for any batching).
With --speculative, a second server (scripts/serve.py --speculative ...) serves the same requests,
interleaved with the plain one, and three columns more show its output tokens/s, the ratio to
the plain server's, and how many answers equal the plain server's (greedy: all of them should).

Without --model, a random-weights model of --config (default: tiny, the `make demo` size) with
a tokenizer trained on synthetic Korean text is written to a temporary directory.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_isa_argument, enter_isa, environment, write_report  # noqa: E402


def make_random_model(out: Path, config_name: str) -> Path:
    """A random-weights checkpoint directory of TransformerConfig.<config_name>() with a real tokenizer."""
    import torch

    from kr_mini_llm import Transformer, TransformerConfig
    from kr_mini_llm.data.tokenizer import train_tokenizer
    from kr_mini_llm.lora.fuse import save_model_dir

    config = getattr(TransformerConfig, config_name)().replace(dropout=0.0)
    rng = random.Random(0)
    syllables = [chr(0xAC00 + rng.randrange(11172)) for _ in range(600)]
    lines = (" ".join("".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(12)) for _ in range(30000))
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer([corpus], vocab_size=config.vocab_size, output_prefix=out / "tokenizer", num_threads=2,
                          log_level=2)
    torch.manual_seed(0)
    return save_model_dir(Transformer(config), out / f"random-{config_name}", tok)


def start_server(model: Path, max_batch: int, threads: int | None,
                 extra: list[str] = ()) -> tuple[subprocess.Popen, str, int, str]:
    """scripts/serve.py (with `extra` arguments) on a free port: (process, host, port, served model name)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(model), "--port", "0",
           "--max-batch", str(max_batch), "--log-level", "warning", "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # serving 'NAME' on http://HOST:PORT  (...)
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
    return proc, host, int(port), line.split("'")[1]


async def stream_request(host: str, port: int, body: dict) -> dict:
    """One streaming completion over raw HTTP/1.1: text, usage, timings, completeness."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    if status != 200:
        raise SystemExit(f"request failed ({status}): {(await reader.read()).decode(errors='replace')}")
    text, chunks, usage, finish, done, ttft = "", 0, None, None, False, None
    buf = b""
    while True:
        size = await reader.readline()  # chunked transfer encoding
        n = int(size.strip() or b"0", 16)
        if n == 0:
            break
        buf += (await reader.readexactly(n + 2))[:-2]  # the chunk without its CRLF
        *events, buf = buf.split(b"\n\n")
        for ev in events:
            data = ev.decode()[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if obj.get("usage"):
                usage = obj["usage"]
            for c in obj.get("choices", []):
                if c["text"]:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text += c["text"]
                chunks += 1
                finish = c["finish_reason"] or finish
    writer.close()
    return dict(status=status, text=text, usage=usage, finish=finish, done=done, chunks=chunks,
                ttft=ttft if ttft is not None else time.perf_counter() - t0, latency=time.perf_counter() - t0)


async def run_level(host, port, model_name, prompts, concurrency, max_tokens) -> tuple[float, list[dict]]:
    queue = list(enumerate(prompts))
    results: list[dict | None] = [None] * len(prompts)

    async def client():
        while queue:
            i, prompt = queue.pop(0)
            results[i] = await stream_request(host, port, dict(
                model=model_name, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t0, results


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def decode_step_ceiling(model: Path, levels: list[int], threads: int | None, repeats: int) -> dict[int, float]:
    """Tokens/s of the bare model's decode step at batch N (KV cache, no server), in this process:
    what batching could give at most. Batch sizes interleaved over repeats; medians."""
    import torch

    from kr_mini_llm.inference import Generator
    from kr_mini_llm.model import KVCache

    if threads:
        torch.set_num_threads(threads)
    model = Generator.from_pretrained(model, device="cpu").model
    cache = KVCache.for_model(model.config, max(levels), model.config.max_seq_length)
    times = {c: [] for c in levels}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for c in levels:
                cache.lens.fill_(32)  # mid-answer
                tokens = torch.randint(4, model.config.vocab_size, (c, 1))
                t0 = time.perf_counter()
                for _ in range(16):
                    model(tokens, kv_cache=cache.rows(0, c), last_logits_only=True)
                times[c].append((time.perf_counter() - t0) / 16)
    return {c: c / statistics.median(t[1:]) for c, t in times.items()}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint directory (default: random weights of --config)")
    p.add_argument("--config", default="tiny", help="TransformerConfig preset for the random model")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max_tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server (default: torch's)")
    p.add_argument("--speculative", choices=["prompt_lookup"], default=None,
                   help="also measure a server with this speculative decoding (extra columns)")
    p.add_argument("--num-draft-tokens", dest="num_draft_tokens", type=int, default=4)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "serve_cpu.md")
    add_isa_argument(p)
    args = p.parse_args()
    enter_isa(args.isa)
    levels = [int(c) for c in args.concurrency.split(",")]
    start = time.time()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_random_model(Path(tmp), args.config)
        servers = {"plain": start_server(model, max(levels), args.threads)}
        try:
            if args.speculative:
                servers["spec"] = start_server(model, max(levels), args.threads, [
                    "--speculative", args.speculative, "--num-draft-tokens", str(args.num_draft_tokens)])
            prompts = [f"요청 {i}: " + "오늘 날씨가 좋아서 " * (1 + i % 3) for i in range(args.requests)]
            runs = {(kind, c): [] for kind in servers for c in levels}
            for kind, (proc, host, port, name) in servers.items():
                asyncio.run(run_level(host, port, name, prompts[:2], 1, 8))  # warm-up
            for r in range(args.repeats):
                for c in levels:
                    for kind, (proc, host, port, name) in servers.items():
                        cpu0 = cpu_seconds(proc.pid)
                        wall, res = asyncio.run(run_level(host, port, name, prompts, c, args.max_tokens))
                        cpu1 = cpu_seconds(proc.pid)
                        runs[kind, c].append((wall, res, None if cpu0 is None else cpu1 - cpu0))
                        print(f"repeat {r}: concurrency {c}: {kind}: {wall:.2f} s", flush=True)
        finally:
            for proc, *_ in servers.values():
                proc.terminate()
                proc.wait(30)
        ceiling = decode_step_ceiling(model, levels, args.threads, args.repeats)

    solo = {i: res["text"] for wall, results, _ in runs["plain", min(levels)] for i, res in enumerate(results)}
    rows, tps, cpu_tps = [], {}, {}

    def tokens(run):
        return sum((res["usage"] or {}).get("completion_tokens", 0) for res in run[1])

    def median_run(kind, c):
        return sorted(runs[kind, c], key=lambda run: tokens(run) / run[0])[len(runs[kind, c]) // 2]

    for c in levels:
        wall, results, cpu = median_run("plain", c)
        out_tokens = tokens((wall, results))
        tps[c] = out_tokens / wall
        cpus = [tokens(run) / run[2] for run in runs["plain", c] if run[2]]
        cpu_tps[c] = statistics.median(cpus) if cpus else None
        complete = sum(res["status"] == 200 and res["done"] and res["finish"] in ("stop", "length")
                       and res["usage"] is not None for res in results)
        own = sum(res["text"] == solo[i] for i, res in enumerate(results))
        ttft = [res["ttft"] for res in results]
        lat = [res["latency"] for res in results]
        per_cpu = (f"{cpu_tps[c]:,.0f} | {cpu_tps[c] / cpu_tps[levels[0]]:.2f}x" if cpu_tps[c] and cpu_tps[levels[0]]
                   else "– | –")
        rows.append(f"| {c} | {len(results)} | {len(results) / wall:.2f} | {tps[c]:,.1f} "
                    f"| {tps[c] / tps[levels[0]]:.2f}x "
                    f"| {per_cpu} | {ceiling[c] / ceiling[levels[0]]:.2f}x "
                    f"| {pct(ttft, .5) * 1e3:,.0f} | {pct(ttft, .95) * 1e3:,.0f} | {pct(lat, .5) * 1e3:,.0f} "
                    f"| {pct(lat, .95) * 1e3:,.0f} | {complete}/{len(results)} | {own}/{len(results)} |")
        if args.speculative:
            spec_wall, spec_results, _ = median_run("spec", c)
            spec_tps = tokens((spec_wall, spec_results)) / spec_wall
            same = sum(res["text"] == solo[i] for i, res in enumerate(spec_results))
            rows[-1] += f" {spec_tps:,.1f} | {spec_tps / tps[c]:.2f}x | {same}/{len(spec_results)} |"
        print(rows[-1], flush=True)

    import torch
    lines = ["# Serving on the CPU: continuous batching", "",
             "Command: `python " + " ".join(["scripts/bench_serve.py", *sys.argv[1:]]) + "`", "", *environment(),
             f"- Server: scripts/serve.py --max-batch {max(levels)}, fp32, torch threads: "
             f"{args.threads or torch.get_num_threads()}; model: "
             + (str(args.model) if args.model else f"random weights, TransformerConfig.{args.config}()"),
             f"- Workload: {args.requests} streaming completions per level (distinct prompts), "
             f"greedy, max_tokens {args.max_tokens}; N clients each send their next request when the last "
             "one ends; clients and server share the machine",
             "- The machine was shared with other jobs while this ran (1-minute load average "
             f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores): "
             "absolute figures are noisy; the ratios are measured in the same run, levels interleaved over "
             "repeats (medians by output tokens/s).", "",
             "| clients | requests | requests/s | output tok/s | vs 1 client | tok per server CPU-s | vs 1 client "
             "| bare decode step, batch N vs 1 | TTFT p50 ms | TTFT p95 ms | latency p50 ms | latency p95 ms "
             "| complete | own answer |" + (" speculative output tok/s | vs plain | same answer |"
                                             if args.speculative else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if args.speculative else ""),
             *rows, "",
             "bare decode step: tokens/s of the model's KV-cache decode step alone at batch N over batch 1, in "
             "the benchmark process after the server stopped: the most batching could give on this machine.",
             "tok per server CPU-s: output tokens per second of CPU time the server process used (user + system, "
             "all its threads), which a busy machine disturbs less than wall-clock throughput.",
             "complete: the stream ended with a finish_reason, a usage chunk and `data: [DONE]`. own answer: the "
             "text equals that prompt's answer when served alone (1 client); a difference would mean rows mixed."]
    if args.speculative:
        lines += ["", f"speculative: a second server with `--speculative {args.speculative} --num-draft-tokens "
                  f"{args.num_draft_tokens}`, measured interleaved with the plain one; same answer: its text equals "
                  "the plain server's answer to that prompt at 1 client (greedy, so it must)."]
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
