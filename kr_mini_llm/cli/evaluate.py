"""Evaluate one or more trained models: loss, tokenizer, speed and samples.

    python scripts/evaluate.py --model checkpoints/demo [more dirs ...] [--tokens data/tokens]
        [--prompts prompts.txt] [--output report] [--ood FILE | --no_ood]

Writes <output>.json and <output>.md (default report.json / report.md) with, per model:
  - loss, perplexity and bits per UTF-8 byte on the whole test split, with the tokens and
    bytes covered (a model whose tokenizer did not make the shards re-encodes the test text,
    data/processed/test.txt beside data/tokens or --test_text, so any tokenizers compare);
  - its tokenizer on the test text: chars and bytes per token, byte-fallback share, unknown pieces;
  - the same loss and tokenizer figures on an out-of-domain Korean text, beside the test split's:
    by default the Korean Constitution and bills (data/eval/ood_kolaw.txt beside --tokens' folder,
    made on first use from konlpy's wheel, pip-downloaded once; evaluated without it, with a
    message, when that cannot be done), or --ood FILE;
  - generation at batch 1: time to first token for a 128-token prompt, decode tokens/s,
    peak memory (a fresh process per model); parameter count; bytes on disk;
  - seeded samples for each prompt (default: the project's Korean prompt set,
    kr_mini_llm/eval/prompts.py; --prompts FILE: one UTF-8 prompt per line);
and a comparison table of all models.
"""
import argparse
from pathlib import Path

from ..eval import DEFAULT_PROMPTS, read_prompts
from ..eval.machine import environment
from ..eval.ood import locate_ood
from ..eval.report import evaluate_models, report_paths, write_report
from ..io.outputs import add_overwrite_flag, claim_output
from .command import command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="checkpoint or output directories")
    p.add_argument("--tokens", default="data/tokens", help="token shards with a test split (prepare_data.py)")
    p.add_argument("--test_text", default=None,
                   help="the processed test text (default: processed/test.txt beside --tokens, when present)")
    p.add_argument("--prompts", default=None, help="UTF-8 file, one prompt per line (default: the built-in set)")
    p.add_argument("--output", default="report", help="writes OUTPUT.json and OUTPUT.md")
    p.add_argument("--max_new_tokens", type=int, default=60, help="tokens per sample")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward in the test loss")
    p.add_argument("--device", default=None, help="cpu | cuda | mps (default: auto)")
    p.add_argument("--no_speed", action="store_true", help="skip the generation timing")
    ood = p.add_mutually_exclusive_group()
    ood.add_argument("--ood", default=None, help="out-of-domain text (UTF-8, documents separated by blank lines; "
                                                  "default: the Korean Constitution and bills, ood_kolaw.txt)")
    ood.add_argument("--no_ood", action="store_true", help="no out-of-domain text")
    add_overwrite_flag(p)
    return p


@command(FileNotFoundError)
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    js, md = report_paths(args.output)
    claim_output(js, also=[md], is_dir=False, overwrite=args.overwrite,
                 inputs=[*args.model, args.tokens, args.test_text, args.prompts, args.ood])
    prompts = read_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
    tokens = args.tokens if Path(args.tokens).exists() or args.test_text is None else None
    # located once the models and the test split are checked: making the default set may download a wheel
    ood = None if args.no_ood else (lambda: locate_ood(args.ood, tokens or args.tokens))
    report = evaluate_models(args.model, tokens=tokens, test_text=args.test_text, ood=ood, prompts=prompts,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device,
                             batch_size=args.batch_size, speed=not args.no_speed)
    js, md = write_report(report, args.output, machine=environment())
    print(f"wrote {js} and {md}")
    return 0
