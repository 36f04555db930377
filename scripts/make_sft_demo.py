#!/usr/bin/env python3
"""Derive an offline instruction set from the default Korean corpus (the LibreOffice help pages
and Debian FAQ that scripts/prepare_data.py extracts), for the LoRA demo.

    python scripts/make_sft_demo.py --input data/processed --output data/sft

Each document of data/processed/{train,valid,test}.txt (documents are separated by blank lines)
whose first line is a title (at most --max-title-chars characters, not ending in a full stop)
and whose next line is a paragraph of at least --min-answer-chars characters becomes one row

    {"instruction": "다음 도움말 항목을 한 문단으로 설명하세요.", "input": TITLE, "output": PARAGRAPH}

with PARAGRAPH cut after the last sentence that fits in --max-answer-chars. The corpus splits are
kept (train.txt -> train.jsonl, valid.txt -> valid.jsonl, test.txt -> test.jsonl), so the
validation and test rows come from documents the base model never trained on.
"""
import argparse
import json
import re
import sys
from pathlib import Path

from kr_mini_llm.cli.command import command
from kr_mini_llm.io.atomic import atomic_write_text
from kr_mini_llm.io.outputs import add_overwrite_flag, check_not_input, claim_output

INSTRUCTION = "다음 도움말 항목을 한 문단으로 설명하세요."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentences(text: str, limit: int) -> str:
    out = ""
    for sentence in _SENTENCE_END.split(text.strip()):
        if len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}".strip()
    return out


def rows_from(doc: str, args):
    lines = [ln.strip() for ln in doc.strip().split("\n") if ln.strip()]
    if len(lines) < 2:
        return None
    title, para = lines[0], lines[1]
    if len(title) > args.max_title_chars or title.endswith((".", "다", ":")):
        return None
    answer = first_sentences(para, args.max_answer_chars)
    if len(answer) < args.min_answer_chars:
        return None
    return {"instruction": INSTRUCTION, "input": title, "output": answer}


@command(FileNotFoundError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="data/processed", help="directory with train.txt, valid.txt, test.txt")
    p.add_argument("--output", default="data/sft")
    p.add_argument("--max-title-chars", type=int, default=40)
    p.add_argument("--min-answer-chars", type=int, default=20)
    p.add_argument("--max-answer-chars", type=int, default=200)
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    src, out = Path(args.input), Path(args.output)
    splits = ("train", "valid", "test")
    for split in splits:
        if not (src / f"{split}.txt").is_file():
            raise FileNotFoundError(f"{src / f'{split}.txt'} not found; run python scripts/prepare_data.py first")
    check_not_input(out, [src])
    for split in splits:
        claim_output(out / f"{split}.jsonl", is_dir=False, overwrite=args.overwrite, inputs=[src])
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        f = src / f"{split}.txt"
        docs = f.read_text(encoding="utf-8").split("\n\n")
        rows, seen = [], set()
        for doc in docs:
            row = rows_from(doc, args)
            if row and row["input"] not in seen:  # one row per title
                seen.add(row["input"])
                rows.append(row)
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{out / f'{split}.jsonl'}: {len(rows)} rows from {len(docs)} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
