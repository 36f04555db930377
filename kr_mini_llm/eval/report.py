"""scripts/evaluate.py's report: what a user measures after
training, for one model or several, written as report.json and report.md.

    from kr_mini_llm.eval import evaluate_models, write_report
    from kr_mini_llm.eval.ood import locate_ood
    results = evaluate_models(["checkpoints/demo"], tokens="data/tokens",
                              ood=locate_ood(None, "data/tokens"))   # + the out-of-domain text (ood.py)
    write_report(results, "report")        # report.json, report.md
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..io import layout
from ..io.atomic import atomic_write_text
from .ood import OodText
from .prompts import DEFAULT_PROMPTS
from .speed import PROMPT_TOKENS, generation_speed
from .test_split import EvalError, TestSplit, test_loss
from .tokenizer_stats import tokenizer_stats

__all__ = ["evaluate_model", "evaluate_models", "write_report", "render_markdown"]

# Files a model needs at inference (what you would ship), as opposed to the whole checkpoint.
MODEL_FILES = (layout.MODEL_WEIGHTS, layout.MODEL_CONFIG, layout.TOKENIZER)


def _load(model_dir, device):
    from ..checkpoint import CheckpointError, TokenizerPairingError, load_model_dir, resolve_checkpoint
    from ..device import pick_device
    from ..inference import Generator

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
    try:
        model, tok, _ = load_model_dir(ckpt)
    except TokenizerPairingError as e:
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


def _held_out(name, model, tok, split: TestSplit, batch_size, device, log) -> dict:
    """Loss, perplexity and bits/byte over a whole text, with the tokenizer's figures on it."""
    t0 = time.perf_counter()
    loss = test_loss(model, tok, split, batch_size=batch_size, device=device)
    log(f"[eval]   {name} loss {loss['loss']:.4f}, ppl {loss['perplexity']:.2f}, {loss['bits_per_byte']:.4f} bits/byte "
        f"over {loss['tokens']:,} tokens / {loss['bytes']:,} bytes ({time.perf_counter() - t0:.1f} s)")
    return loss


def evaluate_model(model_dir, split: TestSplit, prompts=DEFAULT_PROMPTS, max_new_tokens: int = 60,
                   seed: int = 0, device: str | None = None, batch_size: int = 8, speed: bool = True,
                   ood: OodText | None = None, log=print) -> dict:
    ckpt, gen = _load(model_dir, device)
    tok, model = gen.tokenizer, gen.model
    log(f"[eval] {ckpt}: {model.num_parameters:,} parameters on {gen.device}")
    loss = _held_out("test", model, tok, split, batch_size, gen.device, log)
    stats = tokenizer_stats(tok, split.documents(tok))
    result = {"model": str(model_dir), "checkpoint": str(ckpt), "parameters": model.num_parameters,
              "bytes_on_disk": _disk(ckpt), "tokenizer_fingerprint": tok.fingerprint, "test": loss,
              "tokenizer": stats}
    if ood is not None and ood.path is not None:
        # Re-encoded by the model's own tokenizer, bytes counted from the text: comparable across models.
        ood_split = TestSplit(None, ood.path)
        result["ood"] = {**_held_out("out-of-domain", model, tok, ood_split, batch_size, gen.device, log),
                         "tokenizer": tokenizer_stats(tok, ood_split.documents())}
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


def evaluate_models(model_dirs, tokens=None, test_text=None, ood: OodText | Callable[[], OodText] | None = None,
                    **kw) -> dict:
    """Every model on the test split and, when `ood` has a text, on that out-of-domain text (a
    callable is called once the models and the split are checked: locate_ood may download)."""
    split = TestSplit.find(tokens, test_text)
    # Check every model directory before spending time on the first.
    from ..checkpoint import resolve_checkpoint

    for d in model_dirs:
        try:
            resolve_checkpoint(d)
        except Exception as e:  # noqa: BLE001 - reported with the directory named
            raise EvalError(f"--model {str(d)!r}: {e}") from None
    if callable(ood):
        ood = ood()
    models = [evaluate_model(d, split, ood=ood, **kw) for d in model_dirs]
    return {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "test_split": {"tokens": str(split.tokens_dir) if split.tokens_dir else None,
                                                              "text": str(split.text_path) if split.text_path else None},
            "ood_set": ood.to_dict() if ood is not None else None, "models": models}


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
    out += _held_out_table(report)
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


def _held_out_table(report: dict) -> list[str]:
    """In-domain test split and out-of-domain text side by side, one row per model and text."""
    ood = report.get("ood_set")
    out = ["", "## In-domain and out-of-domain", "",
           "| model | text | loss | perplexity | bits/byte | tokens | bytes | chars/token | byte fallback |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        rows = [("test split (in-domain)", m["test"], m["tokenizer"])]
        if "ood" in m:
            rows.append((f"out-of-domain: {Path(ood['text']).name}", m["ood"], m["ood"]["tokenizer"]))
        for name, t, s in rows:
            out.append(f"| {m['model']} | {name} | {t['loss']:.4f} | {t['perplexity']:.2f} | {t['bits_per_byte']:.4f} "
                       f"| {t['tokens']:,} | {t['bytes']:,} | {s['chars_per_token']:.3f} | {s['byte_fallback_share']:.2%} |")
    if ood is not None:
        out += ["", "Out-of-domain text: " + ood["note"].replace("\n", " ")]
    return out


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
