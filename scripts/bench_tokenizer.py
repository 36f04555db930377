#!/usr/bin/env python3
"""The tokenizer study: SentencePiece BPE and Unigram at several vocabulary sizes, each judged by

  - chars per token and byte-fallback share on the validation split and on the out-of-domain text
    (the Korean Constitution and bills, kr_mini_llm/data/kolaw.py, or --ood FILE);
  - validation (and test) bits per byte of model_tiny, its vocabulary set to the tokenizer's, trained
    for the same --minutes with bench_recipe.py's loop (configs/training_demo.yaml's recipe, schedule
    keyed to the time budget). Bits per byte divide by the text's bytes, not its tokens, so
    vocabularies compare. A larger vocabulary makes a slower step (the head and the loss grow with
    it), so by default (--budget steps) every model's seconds a step are measured first, the models
    taking turns, and each run makes the steps that fit its minutes: a shared machine's load
    changes how long the study takes, not what it computes (bench_recipe.py's budget options).

Each tokenizer is trained on --processed/train.txt (scripts/train_tokenizer.py's settings), and the
three splits are encoded into token shards in a work folder (removed at the end unless --work_dir).

  python scripts/bench_tokenizer.py --processed data/processed --vocab-sizes 2000 4000 8000 16000 32000 \\
      --model-types bpe unigram --minutes 4 --seeds 0 1 --threads 2 --jobs 2 --output benchmarks/tokenizer.md

--pretokenize none kiwi adds morpheme-aware training (train_tokenizer.py --pretokenize kiwi: pieces never
cross a morpheme boundary Kiwi finds) to the study; MeCab-ko is not in it (docs/training-recipe.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import environment, write_report  # noqa: E402
from bench_recipe import (TODAY, add_budget_args, budget_steps, check_budget_args, demo_recipe,  # noqa: E402
                          parse_keys, parse_step_seconds, run_all, step_seconds)

from kr_mini_llm import TransformerConfig  # noqa: E402
from kr_mini_llm.data.datasets import TokenShards  # noqa: E402
from kr_mini_llm.data.morphemes import PRETOKENIZERS, kiwi_spans  # noqa: E402
from kr_mini_llm.data.pipeline import tokenize_splits  # noqa: E402
from kr_mini_llm.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from kr_mini_llm.eval.ood import locate_ood  # noqa: E402
from kr_mini_llm.eval.test_split import split_documents  # noqa: E402
from kr_mini_llm.eval.tokenizer_stats import tokenizer_stats  # noqa: E402
from kr_mini_llm.cli.command import command  # noqa: E402
from kr_mini_llm.errors import KrMiniLlmError  # noqa: E402
from kr_mini_llm.io.outputs import add_overwrite_flag, claim_output  # noqa: E402

SPLITS = ("train", "valid", "test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processed", default="data/processed", help="train/valid/test.txt (prepare_data.py)")
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[2000, 4000, 8000, 16000, 32000])
    p.add_argument("--model-types", nargs="+", default=["bpe", "unigram"], choices=["bpe", "unigram"])
    p.add_argument("--pretokenize", nargs="+", default=["none"], choices=PRETOKENIZERS,
                   help="kiwi: also tokenizers whose pieces stay inside Kiwi's morphemes (needs kiwipiepy)")
    p.add_argument("--minutes", type=float, default=4.0, help="training time of each model")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--model_config", default=str(ROOT / "configs" / "model_tiny.yaml"))
    p.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training keys over the demo's recipe (configs/training_demo.yaml), e.g. max_seq_length=128")
    ood = p.add_mutually_exclusive_group()
    ood.add_argument("--ood", default=None, help="out-of-domain text (default: ood_kolaw.txt in the data folder)")
    ood.add_argument("--no_ood", action="store_true")
    p.add_argument("--threads", type=int, help="threads of the calibration (and of time-budgeted runs)")
    add_budget_args(p)
    p.add_argument("--work_dir", default=None, help="keep the tokenizers and shards here (default: a temporary folder)")
    p.add_argument("--output", default="benchmarks/tokenizer.md")
    add_overwrite_flag(p)
    return p


def check_inputs(args) -> None:
    """Bad input stops here, before any tokenizer is trained."""
    missing = [s for s in SPLITS if not (Path(args.processed) / f"{s}.txt").is_file()]
    if missing:
        raise KrMiniLlmError(f"--processed {args.processed}: no {', '.join(m + '.txt' for m in missing)}; "
                             "make them with scripts/prepare_data.py")
    small = [v for v in args.vocab_sizes if v < 300]
    if small:
        raise KrMiniLlmError(f"--vocab-sizes {small}: a vocabulary holds 6 special tokens and 256 byte pieces; "
                             "use 300 or more")
    if args.minutes <= 0:
        raise KrMiniLlmError(f"--minutes must be > 0, got {args.minutes}")
    check_budget_args(args)
    if "kiwi" in args.pretokenize:
        kiwi_spans()  # not installed: say so before any tokenizer is trained


def name_of(model_type: str, pretokenize: str, vocab: int) -> str:
    return f"{model_type}-{vocab}" if pretokenize == "none" else f"{model_type}-{pretokenize}-{vocab}"


def prepare_one(model_type: str, pretokenize: str, vocab: int, args, work: Path, texts: dict) -> dict:
    """Trains one tokenizer, measures it on the texts and encodes the three splits into token shards."""
    name = name_of(model_type, pretokenize, vocab)
    t0 = time.perf_counter()
    try:
        path = train_tokenizer([Path(args.processed) / "train.txt"], vocab, work / name, model_type=model_type,
                               log_level=2, pretokenize=pretokenize)
    except RuntimeError as e:   # SentencePiece: e.g. a vocabulary larger than the corpus allows
        raise KrMiniLlmError(f"--vocab-sizes {vocab} ({model_type}): SentencePiece cannot train it on "
                             f"{args.processed}/train.txt: {e}") from e
    seconds = time.perf_counter() - t0
    tok = Tokenizer(path)
    tokens = work / f"tokens-{name}"
    tokenize_splits(path, args.processed, tokens, num_proc=1, progress=False, log=lambda *a, **k: None)
    return {"name": name, "type": model_type, "pretokenize": pretokenize, "vocab": vocab, "tokenizer_s": seconds, "tokenizer": str(path),
            "tokens": str(tokens), "vocab_size": tok.vocab_size,
            "shards": {s: TokenShards(tokens, s, expected_fingerprint=tok) for s in SPLITS},
            **{f"{k}_stats": tokenizer_stats(tok, docs) for k, docs in texts.items()}}


def _share(stats: dict | None, key: str, fmt: str) -> str:
    return format(stats[key], fmt) if stats else "–"


def table(results: list[dict]) -> list[str]:
    lines = ["| type | pre-tokenization | vocab | valid chars/token | valid byte fallback | OOD chars/token | OOD byte fallback "
             "| steps (mean) | valid bpb (mean) | seed spread | test bpb (mean) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        v = [x["valid"] for x in r["runs"]]
        ood = r.get("ood_stats")
        lines.append(f"| {r['type']} | {r['pretokenize']} | {r['vocab']:,} | {_share(r['valid_stats'], 'chars_per_token', '.3f')} "
                     f"| {_share(r['valid_stats'], 'byte_fallback_share', '.2%')} "
                     f"| {_share(ood, 'chars_per_token', '.3f')} | {_share(ood, 'byte_fallback_share', '.2%')} "
                     f"| {statistics.mean(x['steps'] for x in r['runs']):.0f} | {statistics.mean(v):.4f} "
                     f"| {max(v) - min(v):.4f} | {statistics.mean(x['test'] for x in r['runs']):.4f} |")
    return lines


@command()
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    claim_output(args.output, overwrite=args.overwrite, inputs=[args.processed, args.ood], is_dir=False)
    check_inputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = {**TODAY, **demo_recipe(), **parse_keys(args.train), "max_time_minutes": args.minutes}
    model_cfg = TransformerConfig.from_yaml(args.model_config)
    studied = [(t, pt, v) for t in args.model_types for pt in args.pretokenize for v in args.vocab_sizes]
    names = [name_of(*s) for s in studied]
    given = parse_step_seconds(args.step_seconds, names) if args.budget == "steps" else {}
    texts = {"valid": split_documents((Path(args.processed) / "valid.txt").read_text(encoding="utf-8"))}
    ood = None if args.no_ood else locate_ood(args.ood, args.processed)
    if ood is not None and ood.path is not None:
        texts["ood"] = split_documents(ood.path.read_text(encoding="utf-8"))
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [prepare_one(t, pt, v, args, work, texts) for t, pt, v in studied]
        cfgs = {r["name"]: model_cfg.replace(vocab_size=r["vocab_size"]) for r in results}
        step_s = dict(given)
        missing = {r["name"]: (keys, cfgs[r["name"]], r["shards"]) for r in results if r["name"] not in given}
        if args.budget == "steps" and missing:
            step_s.update(step_seconds(missing, {}, args.calibration_steps))
        for name, seconds in step_s.items():
            print(f"{name}: {seconds:.3f} s a step at {torch.get_num_threads()} threads", flush=True)
        jobs = [((r["name"], seed), (r["tokens"], r["tokenizer"], "ours", keys, cfgs[r["name"]], seed, args.minutes,
                                     budget_steps(args.minutes, step_s.get(r["name"]))))
                for r in results for seed in args.seeds]
        runs = {}

        def report(key, out):
            runs[key] = out
            print(f"{key[0]} seed {key[1]}: {out['steps']} steps ({out['wall_s']:.0f} s wall), valid "
                  f"{out['valid']:.4f} bpb, test {out['test']:.4f} bpb", flush=True)

        run_all(jobs, args, report)
        for r in results:
            r["runs"] = [runs[(r["name"], seed)] for seed in args.seeds]
            del r["shards"]
    budget = (f"the steps each model makes in the minutes, from its seconds a step at {torch.get_num_threads()} "
              f"threads (median of {args.calibration_steps}, the models taking turns"
              f"{'; given: ' + ', '.join(sorted(given)) if given else ''}): "
              + ", ".join(f"{n} {v:.3f}" for n, v in step_s.items())) if step_s else "busy CPU time"
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Tokenizer study: vocabulary size, BPE vs Unigram, morpheme-aware training", "",
             f"Command: `python scripts/bench_tokenizer.py {command}`", "", *environment(),
             f"Data: {args.processed} (valid {sum(map(len, texts['valid'])):,} characters); out-of-domain: "
             + (ood.note.replace("\n", " ") if ood is not None else "not evaluated (--no_ood)"),
             f"Model: {Path(args.model_config).name}, vocabulary set to each tokenizer's; {args.minutes:g} min of "
             f"training per seed ({', '.join(map(str, args.seeds))}), recipe {keys}", f"Budget: {budget}", "",
             *table(results), "",
             "Chars per token: more is shorter sequences. Byte fallback: the share of tokens that spell a character "
             "the vocabulary lacks byte by byte. Bits per byte: the model's loss over the split's UTF-8 bytes, "
             "comparable across vocabularies."]
    write_report(args.output, lines, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
