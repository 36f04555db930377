#!/usr/bin/env python3
"""Preference pairs for the DPO demo, from the instruction set of scripts/make_sft_demo.py (help-page
titles and their real first paragraphs, from the default Korean corpus):

    python scripts/make_dpo_demo.py --input data/sft --output data/dpo

Each row {"instruction", "input", "output"} of data/sft/{train,valid,test}.jsonl becomes

    {"prompt": INSTRUCTION + "\\n\\n" + TITLE, "chosen": PARAGRAPH, "rejected": SHUFFLED}

where SHUFFLED is the paragraph's words in a seeded random order: the real answer against a
garbled copy of it. Rows whose answer has a single word are skipped (nothing to shuffle).
"""
import argparse
import json
import random
import sys
from pathlib import Path

from kr_mini_llm.cli.command import command
from kr_mini_llm.io.atomic import atomic_write_text
from kr_mini_llm.io.outputs import add_overwrite_flag, check_not_input, claim_output

SPLITS = ("train", "valid", "test")


def preference_pair(row: dict, rng: random.Random):
    words = row["output"].split()
    shuffled = words[:]
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != words:
            user = f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]
            return {"prompt": user, "chosen": row["output"], "rejected": " ".join(shuffled)}
    return None


@command(FileNotFoundError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="data/sft", help="make_sft_demo.py's output: train/valid/test.jsonl")
    p.add_argument("--output", default="data/dpo")
    p.add_argument("--seed", type=int, default=0, help="of the shuffled answers")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    src, out = Path(args.input), Path(args.output)
    for split in SPLITS:
        if not (src / f"{split}.jsonl").is_file():
            raise FileNotFoundError(f"{src / f'{split}.jsonl'} not found; run python scripts/make_sft_demo.py first")
    check_not_input(out, [src])
    for split in SPLITS:
        claim_output(out / f"{split}.jsonl", is_dir=False, overwrite=args.overwrite, inputs=[src])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for split in SPLITS:
        rows = [json.loads(line) for line in (src / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line]
        pairs = [pair for pair in (preference_pair(r, rng) for r in rows) if pair]
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs))
        print(f"{out / f'{split}.jsonl'}: {len(pairs)} preference pairs from {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
