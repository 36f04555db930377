#!/usr/bin/env python3
"""The tokenizer study: SentencePiece BPE and Unigram at several vocabulary sizes, each judged by

  - chars per token and byte-fallback share on the validation split and on the out-of-domain text
    (the Korean Constitution and bills, kr_mini_llm/data/kolaw.py, or --ood FILE);
  - validation (and test) bits per byte of model_tiny, its vocabulary set to the tokenizer's, trained
    for the same --minutes with bench_recipe.py's loop (the demo's recipe, schedule keyed to the
    time budget). Bits per byte divide by the text's bytes, not its tokens, so vocabularies compare.

Each tokenizer is trained on --processed/train.txt (scripts/train_tokenizer.py's settings), and the
three splits are encoded into token shards in a work folder (removed at the end unless --work_dir).

  python scripts/bench_tokenizer.py --processed data/processed --vocab-sizes 2000 4000 8000 16000 32000 \\
      --model-types bpe unigram --minutes 4 --seeds 0 1 --output benchmarks/tokenizer.md

Morpheme-aware pre-tokenization (Kiwi, MeCab-ko) is not part of the study; docs/training-recipe.md says why.
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
from bench_recipe import TODAY, parse_keys, run  # noqa: E402

from kr_mini_llm import TransformerConfig  # noqa: E402
from kr_mini_llm.data.datasets import TokenShards  # noqa: E402
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
    p.add_argument("--minutes", type=float, default=4.0, help="training time of each model")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--model_config", default=str(ROOT / "configs" / "model_tiny.yaml"))
    p.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training keys over the demo recipe's (bench_recipe.py's TODAY), e.g. max_seq_length=128")
    ood = p.add_mutually_exclusive_group()
    ood.add_argument("--ood", default=None, help="out-of-domain text (default: ood_kolaw.txt in the data folder)")
    ood.add_argument("--no_ood", action="store_true")
    p.add_argument("--threads", type=int)
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


def study_one(model_type: str, vocab: int, args, work: Path, texts: dict, model_cfg, keys: dict) -> dict:
    name = f"{model_type}-{vocab}"
    t0 = time.perf_counter()
    try:
        path = train_tokenizer([Path(args.processed) / "train.txt"], vocab, work / name, model_type=model_type,
                               log_level=2)
    except RuntimeError as e:   # SentencePiece: e.g. a vocabulary larger than the corpus allows
        raise KrMiniLlmError(f"--vocab-sizes {vocab} ({model_type}): SentencePiece cannot train it on "
                             f"{args.processed}/train.txt: {e}") from e
    seconds = time.perf_counter() - t0
    tok = Tokenizer(path)
    out = {"type": model_type, "vocab": vocab, "tokenizer_s": seconds,
           **{f"{k}_stats": tokenizer_stats(tok, docs) for k, docs in texts.items()}}
    tokens = work / f"tokens-{name}"
    tokenize_splits(path, args.processed, tokens, num_proc=1, progress=False, log=lambda *a, **k: None)
    shards = {s: TokenShards(tokens, s, expected_fingerprint=tok) for s in SPLITS}
    runs = [run("ours", keys, model_cfg.replace(vocab_size=tok.vocab_size), shards, seed, args.minutes)
            for seed in args.seeds]
    out["runs"] = runs
    print(f"{name}: valid {out['valid_stats']['chars_per_token']:.3f} chars/token, "
          + " ".join(f"seed {s}: {r['steps']} steps, valid {r['valid']:.4f} bpb" for s, r in zip(args.seeds, runs)),
          flush=True)
    return out


def _share(stats: dict | None, key: str, fmt: str) -> str:
    return format(stats[key], fmt) if stats else "–"


def table(results: list[dict]) -> list[str]:
    lines = ["| type | vocab | valid chars/token | valid byte fallback | OOD chars/token | OOD byte fallback "
             "| steps (mean) | valid bpb (mean) | seed spread | test bpb (mean) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        v = [x["valid"] for x in r["runs"]]
        ood = r.get("ood_stats")
        lines.append(f"| {r['type']} | {r['vocab']:,} | {_share(r['valid_stats'], 'chars_per_token', '.3f')} "
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
    keys = {**TODAY, **parse_keys(args.train), "max_time_minutes": args.minutes}
    model_cfg = TransformerConfig.from_yaml(args.model_config)
    texts = {"valid": split_documents((Path(args.processed) / "valid.txt").read_text(encoding="utf-8"))}
    ood = None if args.no_ood else locate_ood(args.ood, args.processed)
    if ood is not None and ood.path is not None:
        texts["ood"] = split_documents(ood.path.read_text(encoding="utf-8"))
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [study_one(t, v, args, work, texts, model_cfg, keys)
                   for t in args.model_types for v in args.vocab_sizes]
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Tokenizer study: vocabulary size, BPE vs Unigram", "",
             f"Command: `python scripts/bench_tokenizer.py {command}`", "", *environment(),
             f"Data: {args.processed} (valid {sum(map(len, texts['valid'])):,} characters); out-of-domain: "
             + (ood.note.replace("\n", " ") if ood is not None else "not evaluated (--no_ood)"),
             f"Model: {Path(args.model_config).name}, vocabulary set to each tokenizer's; {args.minutes:g} min of "
             f"training per seed ({', '.join(map(str, args.seeds))}), recipe {keys}", "",
             *table(results), "",
             "Chars per token: more is shorter sequences. Byte fallback: the share of tokens that spell a character "
             "the vocabulary lacks byte by byte. Bits per byte: the model's loss over the split's UTF-8 bytes, "
             "comparable across vocabularies."]
    write_report(args.output, lines, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
