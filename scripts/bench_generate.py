#!/usr/bin/env python3
"""Generation speed on the CPU: ours (fp32, bf16, int8, int4 decode kernels) against HF generate and llama.cpp.

    python scripts/bench_generate.py                                  # -> benchmarks/generate_cpu.md
    python scripts/bench_generate.py --llama-cpp ~/.cache/kr-mini-llm/llama.cpp --tokenizer models/tokenizer.model
    python scripts/bench_generate.py --models tiny --batches 1 --new_tokens 32 --output /tmp/g.md
    python scripts/bench_generate.py --speculative-model checkpoints/demo --text data/processed/test.txt
                                                                      # -> benchmarks/speculative_cpu.md

Every contender runs greedy decoding with a KV cache on the same random weights, for a fixed number
of new tokens after a prompt of --prompt_len random tokens (no early stop):
  ours-fp32/bf16/int8/int4  Generator on the packed decode kernels (int8: symmetric, per output
                       channel; int4: Q4_0's blocks of 32, fp16 scales)
  ours-DTYPE-7ops      the same, each block of a decode step as its seven ops (DecodeModel.block_max_rows = 0:
                       the path before decode_block), to measure what decode_stack / decode_block take off
  ours-nn              the Transformer with nn.Linear (the Generator before the decode kernels), fp32
  hf-fp32/hf-bf16      transformers LlamaForCausalLM.generate, sdpa attention
  llama.cpp f32/bf16/q8_0/q4_0  llama-batched-bench (or, in a build without it, llama-bench: batch 1 only) on
                       GGUFs converted from the same weights (HF export + llama.cpp's
                       convert_hf_to_gguf.py; needs a SentencePiece --tokenizer)
Ours and HF run in this process, llama.cpp in one process per run; all are interleaved over --repeats
(llama.cpp between our runs, not in a block), medians reported. TTFT = prefill + first
token; prefill tok/s = batch * prompt_len / TTFT; decode tok/s = (new_tokens - 1) * batch / (total - TTFT).
"BW %" = bytes a decode step reads (all weights once, plus the KV cache at the mean context) x steps/s,
over the triad bandwidth (a = b + 2c on 3 x 256 MiB, STREAM byte count) measured in the same run.
Peak MB: ours/HF = weights + the most torch allocates during one generate; llama.cpp = max RSS.

With --speculative-model (a trained model; speculative decoding needs real text, random weights
accept no drafts): plain greedy decoding against prompt lookup (and a --draft-model) on prompts cut
from --text, each prompt's runs interleaved over --repeats, medians summed over the prompts; the
tokens of every speculative run are compared with plain decoding's (greedy: they must be identical).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_isa_argument, enter_isa, environment, peak_memory, write_report  # noqa: E402
from bench_model import hf_model  # noqa: E402

from kr_mini_llm import Transformer, TransformerConfig  # noqa: E402
from kr_mini_llm.device import cpu_flags  # noqa: E402
from kr_mini_llm.inference import Generator  # noqa: E402
from kr_mini_llm.inference.decode_model import DecodeModel  # noqa: E402
from kr_mini_llm.ops.decode_linear import kernel_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OURS = ("fp32", "bf16", "int8", "int4")
MATCH = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}  # our dtype -> llama.cpp type


class _Ids:
    """The Generator needs only eos_id and the piece count from a tokenizer when fed token ids."""
    eos_id = -1

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size


def triad_gbs(threads: int, mib: int = 256, repeats: int = 7) -> float:
    n = mib * 2**20 // 4
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=2.0, out=a)
        times.append(time.perf_counter() - t0)
    return 3 * n * 4 / statistics.median(times[1:]) / 1e9


def run_ours(gen: Generator, prompts, new_tokens):
    t0 = time.perf_counter()
    ttft = None
    for i, _ in enumerate(gen.generate_ids(prompts, new_tokens, temperature=0.0, stop_at_eos=False)):
        if i == 0:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


def run_hf(model, prompts, new_tokens):
    ids = torch.tensor(prompts)
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        total = time.perf_counter() - t0
    return ttft, total


# -- llama.cpp ------------------------------------------------------------------------------------
def make_ggufs(model: Transformer, tokenizer: Path, llama: Path, work: Path) -> dict[str, Path]:
    """f32, bf16 and q8_0 GGUFs of `model` through our HF export and llama.cpp's converter, and q4_0
    from the f32 one through llama-quantize (the converter writes no q4_0)."""
    hf_dir = work / "hf"
    model.save_hf(hf_dir)
    shutil.copyfile(tokenizer, hf_dir / "tokenizer.model")
    env = {**os.environ, "PYTHONPATH": str(llama / "src" / "gguf-py")}
    out = {}
    for t in ("f32", "bf16", "q8_0"):
        path = work / f"model-{t}.gguf"
        subprocess.run([sys.executable, str(llama / "src" / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", t,
                        "--outfile", str(path)], check=True, env=env, capture_output=True)
        out[t] = path
    quantize = llama / "build" / "bin" / "llama-quantize"
    if quantize.exists():
        out["q4_0"] = work / "model-q4_0.gguf"
        subprocess.run([str(quantize), str(out["f32"]), str(out["q4_0"]), "Q4_0"], check=True, capture_output=True)
    return out


# No weight repacking on AMX CPUs: ggml's repacked q8_0 kernels crash there (SIGSEGV/SIGILL) in the
# llama-cpp-python 0.3.36 sources, even on llama-quantize's own files (f32/bf16 are not repacked).
# Elsewhere (and in llama.cpp builds without AMX) repacking stays on: it is what users get.
NO_REPACK = ["--no-repack"] if os.environ.get("KR_MINI_LLM_ISA_LEVEL", "native") == "native" and \
    "amx_tile" in cpu_flags() else []


def run_llama(llama: Path, gguf: Path, prompt_len: int, new_tokens: int, batches, threads: int) -> dict:
    """{batch: (prefill tok/s, decode tok/s, TTFT s, max RSS bytes)} from one llama-batched-bench run
    (or, in a build without it, llama-bench: batch 1 only, decode after a prompt_len context)."""
    exe = llama / "build" / "bin" / "llama-batched-bench"
    if not exe.exists():
        return run_llama_bench(llama, gguf, prompt_len, new_tokens, threads)
    ctx = max(batches) * (prompt_len + new_tokens) + 16
    cmd = [str(exe), "-m", str(gguf), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(prompt_len),
           "-ntg", str(new_tokens), "-npl", ",".join(map(str, batches)), "-t", str(threads),
           *NO_REPACK]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode})")
    res = {}
    # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[0]):
            b = int(cells[2])
            res[b] = (float(cells[5]), float(cells[7]), float(cells[4]), usage.ru_maxrss * 1024)
    return res


def run_llama_bench(llama: Path, gguf: Path, prompt_len: int, new_tokens: int, threads: int) -> dict:
    import json

    cmd = [str(llama / "build" / "bin" / "llama-bench"), "-m", str(gguf), "-p", str(prompt_len), "-n", str(new_tokens),
           "-d", f"0,{prompt_len}", "-t", str(threads), "-r", "1", "-o", "json",
           *(["--repack", "0"] if NO_REPACK else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {os.waitstatus_to_exitcode(status)})")
    pp = tg = None
    for r in json.loads(out):
        if r["n_prompt"] > 0 and r["n_depth"] == 0:
            pp = r["avg_ts"]
        elif r["n_gen"] > 0 and r["n_depth"] == prompt_len:
            tg = r["avg_ts"]
    return {1: (pp, tg, prompt_len / pp, usage.ru_maxrss * 1024)}


# int4 reads half of int8's bytes, so its floor against llama.cpp's q4_0 sits higher
VS_LLAMA = {"int4": 1.3}
BW_FLOOR = {"int8": 75}  # % of the triad bandwidth at batch 1 (the others: 70)


def floor_lines(results: dict, shares: dict, batches: list[int]) -> list[str]:
    """The floors, each with its measured value: batch-1 decode at least VS_LLAMA x llama.cpp at the
    same precision and BW_FLOOR (else 70%) of the triad bandwidth, batch 8 at least 3x batch 1 in total tok/s,
    prefill ahead of llama.cpp."""
    out = ["", "Floors (set for model_small; listed for every model measured), met or MISSED:"]

    def say(ok: bool, text: str) -> None:
        out.append(f"- {'met' if ok else 'MISSED'}: {text}")

    for (name, batch), res in results.items():
        for dt in OURS:
            ours, theirs = res.get(f"ours-{dt}"), res.get(f"llama.cpp-{MATCH[dt]}")
            if ours is None:
                continue
            if batch == 1:
                if theirs is not None:
                    floor = VS_LLAMA.get(dt, 1.0)
                    say(ours[2] >= floor * theirs[2],
                        f"{name} {dt} batch 1 decode {ours[2] / theirs[2]:.2f}x llama.cpp (>= {floor}x)")
                share, floor = shares[name, batch, f"ours-{dt}"], BW_FLOOR.get(dt, 70)
                say(share >= floor, f"{name} {dt} batch 1 decode at {share:.0f}% of the triad bandwidth (>= {floor}%)")
            elif batch == 8 and (name, 1) in results and f"ours-{dt}" in results[name, 1]:
                ratio = ours[2] / results[name, 1][f"ours-{dt}"][2]
                say(ratio >= 3, f"{name} {dt} batch {batch} decode {ratio:.2f}x batch 1 in total tok/s (>= 3x)")
            if theirs is not None:
                say(ours[1] >= theirs[1], f"{name} {dt} batch {batch} prefill {ours[1] / theirs[1]:.2f}x llama.cpp (ahead)")
    return out


def spec_prompts(gen: Generator, text: Path, count: int, prompt_len: int) -> list[list[int]]:
    """The first prompt_len tokens (after BOS) of the first `count` documents of `text` that long."""
    out = []
    for doc in text.read_text(encoding="utf-8").split("\n\n"):
        ids = [gen.tokenizer.bos_id] + gen.tokenizer.encode(doc.strip())
        if len(ids) >= prompt_len:
            out.append(ids[:prompt_len])
        if len(out) == count:
            break
    return out


def bench_speculative(args) -> None:
    from kr_mini_llm.inference.speculative import SpeculativeStats

    start = time.time()
    gen = Generator.from_pretrained(args.speculative_model, device="cpu", dtype=args.dtype,
                                    draft_model=args.draft_model)
    cfg = gen.model.config
    if args.prompt_len + args.new_tokens > cfg.max_seq_length:
        raise SystemExit(f"--prompt_len {args.prompt_len} + --new_tokens {args.new_tokens} exceed the model's "
                         f"context of {cfg.max_seq_length}")
    prompts = spec_prompts(gen, args.text, args.spec_prompts, args.prompt_len)
    if not prompts:
        raise SystemExit(f"{args.text} has no document of {args.prompt_len} tokens")
    contenders = [("plain", None, None)]
    for k in (int(x) for x in args.num_draft_tokens.split(",")):
        contenders.append((f"prompt_lookup k={k}", "prompt_lookup", k))
        if args.draft_model:
            contenders.append((f"draft k={k}", "draft", k))

    def run(prompt, mode, k, stats):
        t0 = time.perf_counter()
        out = [s[0] for s in gen.generate_ids([prompt], args.new_tokens, temperature=0.0, stop_at_eos=False,
                                              speculative=mode, num_draft_tokens=k or 1, ngram=args.ngram,
                                              stats=stats)]
        return time.perf_counter() - t0, out

    times = {name: 0.0 for name, _, _ in contenders}
    stats = {name: SpeculativeStats() for name, _, _ in contenders}
    differ = {name: 0 for name, _, _ in contenders}
    tokens = 0
    for i, prompt in enumerate(prompts):
        for name, mode, k in contenders:  # warm-up
            run(prompt, mode, k, None)
        runs = {name: [] for name, _, _ in contenders}
        for _ in range(args.repeats):  # interleaved: a noisy neighbour slows all alike
            for name, mode, k in contenders:
                runs[name].append(run(prompt, mode, k, stats[name] if not runs[name] else None))
        plain = runs["plain"][0][1]
        tokens += len(plain)
        for name, rs in runs.items():
            times[name] += statistics.median(r[0] for r in rs)
            differ[name] += any(r[1] != plain for r in rs)
        print(f"prompt {i + 1}/{len(prompts)}: " + ", ".join(f"{n} {statistics.median(r[0] for r in rs):.3f} s"
                                                             for n, rs in runs.items()), flush=True)
    weights = getattr(gen.model, "dtype", "nn")
    lines = ["# Speculative decoding on the CPU", "",
             "Command: `python " + " ".join(["scripts/bench_generate.py", *sys.argv[1:]]) + "`", "",
             *environment(),
             f"- Threads: {torch.get_num_threads()}; the cores were shared with other engineers' jobs while "
             "this ran (each prompt's contenders interleaved, medians over --repeats)",
             f"- Model: {args.speculative_model} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, "
             f"{weights} weights); draft model: {args.draft_model or 'none'}",
             f"- Text: the first {len(prompts)} documents of {args.text} with at least {args.prompt_len} tokens; "
             f"prompt = their first {args.prompt_len} tokens (BOS included); {args.new_tokens} new tokens each, "
             f"greedy, no stop at eos; prompt lookup n-gram {args.ngram}; time = the whole generate (prefill "
             "included, the same for all)",
             "", "| decoding | total s | tok/s | speed-up | drafts accepted | tokens per forward | "
             "output identical to plain |", "|---|---|---|---|---|---|---|"]
    base = times["plain"]
    for name, _, _ in contenders:
        st = stats[name]
        acc = f"{st.acceptance:.0%} ({st.accepted}/{st.proposed})" if st.proposed else "–"
        tpf = f"{st.tokens_per_round:.2f}" if st.rounds else "1.00"
        same = "yes" if not differ[name] else f"NO ({differ[name]} of {len(prompts)} prompts differ)"
        lines.append(f"| {name} | {times[name]:.2f} | {tokens / times[name]:.1f} | {base / times[name]:.2f}x | "
                     f"{acc} | {tpf} | {same} |")
        print(lines[-1], flush=True)
    best = max((n for n, m, _ in contenders if m == "prompt_lookup"), key=lambda n: base / times[n])
    ratio = base / times[best]
    ok = ratio >= 1.5 and not differ[best]
    lines += ["", "Floor, met or MISSED:",
              f"- {'met' if ok else 'MISSED'}: greedy prompt lookup ({best}) {ratio:.2f}x plain decoding "
              f"(>= 1.5x, margin {ratio - 1.5:+.2f}x) with {'identical' if not differ[best] else 'DIFFERENT'} output"]
    write_report(args.output or ROOT / "benchmarks" / "speculative_cpu.md", lines, start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt_len", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--impls", default="ours-fp32,ours-bf16,ours-int8,ours-nn,hf-fp32,hf-bf16")
    p.add_argument("--llama-cpp", "--llama_cpp", dest="llama_cpp", type=Path,
                   help="llama.cpp directory with build/bin/llama-batched-bench and src/convert_hf_to_gguf.py")
    p.add_argument("--tokenizer", type=Path, help="SentencePiece model for the GGUFs (llama.cpp needs one)")
    p.add_argument("--no_memory", action="store_true", help="skip the peak-memory runs (profiler; slow)")
    p.add_argument("--output", type=Path, default=None,
                   help="default: benchmarks/generate_cpu.md, or benchmarks/speculative_cpu.md with --speculative-model")
    sp = p.add_argument_group("speculative decoding (on a trained model)")
    sp.add_argument("--speculative-model", "--speculative_model", dest="speculative_model",
                    help="a trained model directory: measure speculative decoding on it instead")
    sp.add_argument("--draft-model", "--draft_model", dest="draft_model", help="a smaller model, same tokenizer")
    sp.add_argument("--text", type=Path, default=ROOT / "data" / "processed" / "test.txt",
                    help="held-out text the prompts are cut from (documents separated by blank lines)")
    sp.add_argument("--spec-prompts", "--spec_prompts", dest="spec_prompts", type=int, default=8)
    sp.add_argument("--num-draft-tokens", "--num_draft_tokens", dest="num_draft_tokens", default="5",
                    help="drafts per verification; a comma list measures each")
    sp.add_argument("--ngram", type=int, default=3)
    sp.add_argument("--dtype", choices=OURS, default=None, help="decode weights of --speculative-model")
    add_isa_argument(p)
    args = p.parse_args()
    enter_isa(args.isa)
    if args.speculative_model:
        torch.set_num_threads(args.threads)
        bench_speculative(args)
        return
    args.output = args.output or ROOT / "benchmarks" / "generate_cpu.md"
    if args.llama_cpp and not args.tokenizer:
        p.error("--llama-cpp needs --tokenizer (a SentencePiece .model) to build the GGUFs")
    known = [f"ours-{d}{v}" for d in OURS for v in ("", "-7ops")] + ["ours-nn", "hf-fp32", "hf-bf16"]
    unknown = [i for i in args.impls.split(",") if i not in known]
    if unknown:
        p.error(f"--impls: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    torch.set_num_threads(args.threads)
    start = time.time()
    batches = [int(b) for b in args.batches.split(",")]
    impls = args.impls.split(",")
    triads = [triad_gbs(args.threads)]
    failures: list[str] = []
    lines = ["# Generation on the CPU", "", "Command: `python " + " ".join(["scripts/bench_generate.py", *sys.argv[1:]]) + "`",
             "", *environment(),
             f"- Threads: {args.threads}; prompt {args.prompt_len} random tokens; {args.new_tokens} new tokens, greedy",
             *(f"- decode_linear with {dt} weights here: {kernel_description(dt)}" for dt in ("bf16", "int8")),
             f"- ISA env: ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}, "
             f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}",
             "", "Medians over repeats, contenders interleaved. 'vs' columns: decode tok/s of ours-DTYPE over the "
             "matching contender (llama.cpp at the same precision, else HF at the same dtype); > 1 means ours is faster.",
             "", "| model | batch | impl | weights MB | TTFT ms | prefill tok/s | decode tok/s | BW % | peak MB | ours vs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    broken: set[str] = set()
    results, shares = {}, {}  # (model, batch) -> {impl: (ttft, prefill tok/s, decode tok/s, mem)}; BW %
    gguf_dir = tempfile.TemporaryDirectory()  # removed when the run ends (or at exit)
    for name in args.models.split(","):
        config = getattr(TransformerConfig, name)().replace(dropout=0.0)
        config = config.replace(max_seq_length=max(config.max_seq_length, args.prompt_len + args.new_tokens))
        torch.manual_seed(0)
        base = Transformer(config).eval()
        contenders, weight_bytes = {}, {}
        for impl in impls:
            kind, dt, *variant = impl.split("-")
            if kind == "ours" and dt in OURS and variant in ([], ["7ops"]):
                model = DecodeModel.from_transformer(base, dt)
                if variant:
                    model.block_max_rows = 0
                gen = Generator(model, _Ids(config.vocab_size), "cpu")
                contenders[impl] = (lambda g=gen: (lambda pr: run_ours(g, pr, args.new_tokens)))()
                weight_bytes[impl] = sum(t.nbytes for k, t in model.state_dict().items() if k != "embed_tokens.weight"
                                         or config.tie_word_embeddings)
            elif impl == "ours-nn":
                gen = Generator(base, _Ids(config.vocab_size), "cpu")
                contenders[impl] = (lambda g=gen: (lambda pr: run_ours(g, pr, args.new_tokens)))()
                weight_bytes[impl] = sum(p.nbytes for p in base.parameters())
            elif kind == "hf":
                hf = hf_model(config, base, "sdpa").eval().to(torch.float32 if dt == "fp32" else torch.bfloat16)
                contenders[impl] = (lambda m=hf: (lambda pr: run_hf(m, pr, args.new_tokens)))()
                weight_bytes[impl] = sum(p.nbytes for p in hf.parameters())
        ggufs = {}
        if args.llama_cpp:
            (Path(gguf_dir.name) / name).mkdir()
            ggufs = make_ggufs(base, args.tokenizer, args.llama_cpp, Path(gguf_dir.name) / name)
        for t, path in ggufs.items():
            weight_bytes[f"llama.cpp-{t}"] = path.stat().st_size
        D, L, Hkv = config.resolved_head_dim, config.num_layers, config.num_kv_heads
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(4, config.vocab_size, (batch, args.prompt_len), generator=g).tolist()
            runs = {impl: [] for impl in contenders}
            llama = {t: [] for t in ggufs}
            for fn in contenders.values():
                fn(prompts)  # warm-up
            for _ in range(args.repeats):  # interleaved: llama.cpp's runs between ours, not in a block
                for t, path in ggufs.items():
                    if t in broken:
                        continue
                    try:
                        row = run_llama(args.llama_cpp, path, args.prompt_len, args.new_tokens, [batch], args.threads)
                    except RuntimeError as e:  # a build that cannot run this type here: say so, keep the rest
                        broken.add(t)
                        failures.append(f"llama.cpp {t} ({name}): {e}")
                        print(failures[-1], file=sys.stderr)
                        continue
                    if batch in row:
                        llama[t].append(row[batch])
                for impl, fn in contenders.items():
                    runs[impl].append(fn(prompts))
                triads.append(triad_gbs(args.threads))
            bw = statistics.median(triads)
            res = {}
            for impl, rs in runs.items():
                ttft = statistics.median(r[0] for r in rs)
                decode = statistics.median((args.new_tokens - 1) * batch / max(r[1] - r[0], 1e-9) for r in rs)
                mem = None if args.no_memory else weight_bytes[impl] + peak_memory(lambda: contenders[impl](prompts))
                res[impl] = (ttft, batch * args.prompt_len / ttft, decode, mem)
            for t, rows in llama.items():
                if rows:
                    pp = statistics.median(r[0] for r in rows)
                    res[f"llama.cpp-{t}"] = (statistics.median(r[2] for r in rows), pp,
                                             statistics.median(r[1] for r in rows), max(r[3] for r in rows))
            # KV bytes read per decode step at the mean context, in the cache dtype of each contender
            ctx = args.prompt_len + args.new_tokens / 2
            results[name, batch] = res
            for impl, (ttft, pf, decode, mem) in res.items():
                kv_elem = 4 if impl.split("-")[1] == "fp32" or impl == "ours-nn" else 2  # ours-bf16/int8/int4: bf16 cache
                step_bytes = weight_bytes[impl] + 2 * L * Hkv * D * ctx * kv_elem * batch
                pct = 100 * step_bytes * decode / batch / (bw * 1e9)
                shares[name, batch, impl] = pct
                vs = "–"
                if impl.startswith("ours-") and impl != "ours-nn":
                    dt = impl.split("-")[1]
                    other = f"llama.cpp-{MATCH[dt]}" if f"llama.cpp-{MATCH[dt]}" in res else \
                        (f"hf-{dt}" if f"hf-{dt}" in res else None)
                    if other:
                        vs = f"{decode / res[other][2]:.2f}x {other}"
                row = (f"| {name} | {batch} | {impl} | {weight_bytes[impl] / 2**20:,.0f} | {ttft * 1e3:,.0f} | "
                       f"{pf:,.0f} | {decode:,.1f} | {pct:.0f} | {'–' if mem is None else f'{mem / 2**20:,.0f}'} | {vs} |")
                lines.append(row)
                print(row, flush=True)
    lines.append(f"\nTriad bandwidth in this run: median {statistics.median(triads):.1f} GB/s "
                 f"(min {min(triads):.1f}, max {max(triads):.1f}) over {len(triads)} measurements.")
    if not args.llama_cpp:
        lines.append("llama.cpp not measured in this run (pass --llama-cpp DIR --tokenizer FILE).")
    lines += [f"- not measured: {f}" for f in failures]
    lines += floor_lines(results, shares, batches)
    gguf_dir.cleanup()
    write_report(args.output, lines, start)


if __name__ == "__main__":
    main()
