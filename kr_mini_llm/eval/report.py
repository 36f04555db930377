"""scripts/evaluate.py's report: what a user measures after
training, for one model or several, written as report.json and report.md.

    from kr_mini_llm.eval import evaluate_models, write_report
    results = evaluate_models(["checkpoints/demo"], tokens="data/tokens")
    write_report(results, "report")        # report.json, report.md
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..io import layout
from ..io.atomic import atomic_write_text
from .prompts import DEFAULT_PROMPTS
from .speed import PROMPT_TOKENS, generation_speed
from .test_split import EvalError, TestSplit, test_loss
from .tokenizer_stats import tokenizer_stats

__all__ = ["evaluate_model", "evaluate_models", "write_report", "render_markdown"]

# Files a model needs at inference (what you would ship), as opposed to the whole checkpoint.
MODEL_FILES = (layout.MODEL_WEIGHTS, layout.MODEL_CONFIG, layout.TOKENIZER)


def _load(model_dir, device):
    from ..inference import Generator
    from ..training.checkpoint import CheckpointError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(model_dir)
    except (CheckpointError, FileNotFoundError) as e:
        raise EvalError(f"--model {str(model_dir)!r}: {e}") from None
    missing = [f for f in MODEL_FILES if not (ckpt / f).is_file()]
    if missing:
        hint = f"; copy the {layout.TOKENIZER} it was trained with into it" if layout.TOKENIZER in missing else ""
        if layout.MODEL_WEIGHTS in missing and (ckpt / layout.SHARDED_DIR).is_dir():
            hint += "; it is a sharded (FSDP) checkpoint: consolidate it first with scripts/consolidate.py"
        raise EvalError(f"--model {str(model_dir)!r}: checkpoint {str(ckpt)!r} lacks {', '.join(missing)}{hint}")
    # The Transformer itself (not the packed decode weights): the test loss needs its fused loss.
    from ..training.checkpoint import load_model, model_tokenizer
    from ..device import pick_device

    model, _ = load_model(ckpt)
    try:
        tok = model_tokenizer(ckpt, model.config.vocab_size)
    except CheckpointError as e:
        raise EvalError(f"--model {str(model_dir)!r}: {e}") from None
    device = pick_device(device or "auto")
    return ckpt, Generator(model.to(device).eval(), tok, device)


def _disk(ckpt: Path) -> dict:
    files = {f.name: f.stat().st_size for f in ckpt.rglob("*") if f.is_file()}
    return {"model_files": sum(v for k, v in files.items() if k in MODEL_FILES), "checkpoint": sum(files.values())}


def _prompt_ids(split: TestSplit, tokenizer) -> list[int]:
    """A PROMPT_TOKENS-token prompt: the start of the test stream (repeated if shorter)."""
    streams, _, _ = split.streams(tokenizer)
    ids = np.concatenate([np.asarray(s[:PROMPT_TOKENS]) for s in streams])[:PROMPT_TOKENS]
    return np.resize(ids, PROMPT_TOKENS).tolist()


def evaluate_model(model_dir, split: TestSplit, prompts=DEFAULT_PROMPTS, max_new_tokens: int = 60,
                   seed: int = 0, device: str | None = None, batch_size: int = 8, speed: bool = True,
                   log=print) -> dict:
    ckpt, gen = _load(model_dir, device)
    tok, model = gen.tokenizer, gen.model
    log(f"[eval] {ckpt}: {model.num_parameters:,} parameters on {gen.device}")
    t0 = time.perf_counter()
    loss = test_loss(model, tok, split, batch_size=batch_size, device=gen.device)
    log(f"[eval]   test loss {loss['loss']:.4f}, ppl {loss['perplexity']:.2f}, {loss['bits_per_byte']:.4f} bits/byte "
        f"over {loss['tokens']:,} tokens / {loss['bytes']:,} bytes ({time.perf_counter() - t0:.1f} s)")
    stats = tokenizer_stats(tok, split.documents(tok))
    result = {"model": str(model_dir), "checkpoint": str(ckpt), "parameters": model.num_parameters,
              "bytes_on_disk": _disk(ckpt), "tokenizer_fingerprint": tok.fingerprint, "test": loss,
              "tokenizer": stats}
    if speed:
        result["generation"] = generation_speed(ckpt, _prompt_ids(split, tok), device=device)
        g = result["generation"]
        log(f"[eval]   TTFT {g['ttft_s'] * 1e3:.1f} ms ({g['prompt_tokens']} tokens), "
            f"{g['decode_tokens_per_s']:.1f} tokens/s, peak {g['peak_memory_bytes'] / 2**20:.0f} MiB")
    result["samples"] = [{"prompt": p, "seed": seed + i,
                          "text": gen.generate(p, max_new_tokens=max_new_tokens, temperature=0.8, top_k=50,
                                               top_p=0.95, seed=seed + i)}
                         for i, p in enumerate(prompts)]
    return result


def evaluate_models(model_dirs, tokens=None, test_text=None, **kw) -> dict:
    split = TestSplit.find(tokens, test_text)
    # Check every model directory before spending time on the first.
    from ..training.checkpoint import resolve_checkpoint

    for d in model_dirs:
        try:
            resolve_checkpoint(d)
        except Exception as e:  # noqa: BLE001 - reported with the directory named
            raise EvalError(f"--model {str(d)!r}: {e}") from None
    models = [evaluate_model(d, split, **kw) for d in model_dirs]
    return {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "test_split": {"tokens": str(split.tokens_dir) if split.tokens_dir else None,
                                                              "text": str(split.text_path) if split.text_path else None},
            "models": models}


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def render_markdown(report: dict, machine: list[str] = ()) -> str:
    out = ["# kr-mini-llm evaluation report", "", f"Created {report['created']}, torch {report['torch']}, "
           f"{report['threads']} threads.", *machine, ""]
    ms = report["models"]
    out += ["## Comparison", "",
            "| model | parameters | on disk (model files) | test loss | perplexity | bits/byte | tokens | bytes "
            "| chars/token | byte fallback | TTFT (128 tok) | decode tok/s | peak memory |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in ms:
        t, s, g = m["test"], m["tokenizer"], m.get("generation")
        out.append(f"| {m['model']} | {m['parameters']:,} | {_mib(m['bytes_on_disk']['model_files'])} | {t['loss']:.4f} "
                   f"| {t['perplexity']:.2f} | {t['bits_per_byte']:.4f} | {t['tokens']:,} | {t['bytes']:,} "
                   f"| {s['chars_per_token']:.3f} | {s['byte_fallback_share']:.2%} | "
                   + (f"{g['ttft_s'] * 1e3:.1f} ms | {g['decode_tokens_per_s']:.1f} | {_mib(g['peak_memory_bytes'])} |"
                      if g else "– | – | – |"))
    for m in ms:
        t, s = m["test"], m["tokenizer"]
        out += ["", f"## {m['model']}", "", f"- checkpoint: `{m['checkpoint']}`",
                f"- test split: `{t['source']}`, windows of {t['seq_len']} tokens; every token but each document's "
                f"`<s>` predicted once",
                f"- tokenizer ({m['tokenizer_fingerprint']}, vocab {s['vocab_size']:,}) on the test text: "
                f"{s['chars_per_token']:.3f} chars/token, {s['bytes_per_token']:.3f} bytes/token, byte fallback "
                f"{s['byte_fallback_share']:.2%} ({s['byte_fallback_tokens']:,} tokens), unknown pieces "
                f"{s['unknown_tokens']:,}",
                f"- on disk: model files {_mib(m['bytes_on_disk']['model_files'])}, whole checkpoint "
                f"{_mib(m['bytes_on_disk']['checkpoint'])}"]
        if m.get("generation"):
            g = m["generation"]
            out.append(f"- generation at batch 1 on {g['device']} ({g['threads']} threads): time to first token "
                       f"{g['ttft_s'] * 1e3:.1f} ms for a {g['prompt_tokens']}-token prompt, then "
                       f"{g['decode_tokens_per_s']:.1f} tokens/s over {g['new_tokens']} tokens (median of "
                       f"{g['repeats']}), peak memory {_mib(g['peak_memory_bytes'])}")
        out += ["", "| seed | prompt | sample |", "|---:|---|---|"]
        for smp in m["samples"]:
            cell = lambda x: x.replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
            out.append(f"| {smp['seed']} | {cell(smp['prompt'])} | {cell(smp['text'])} |")
    return "\n".join(out) + "\n"


def report_paths(output) -> tuple[Path, Path]:
    """<output>.json and <output>.md (an --output that already ends in .json or .md names both)."""
    base = Path(output)
    if base.suffix in (".json", ".md"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".md")


def write_report(report: dict, output, machine: list[str] = ()) -> tuple[Path, Path]:
    """Writes <output>.json and <output>.md (each to a temporary name, then renamed)."""
    js, md = report_paths(output)
    js.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(js, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md, render_markdown(report, machine))
    return js, md
