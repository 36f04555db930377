"""Builds ko_next_sentence.jsonl from pairs.tsv (run it after editing the pairs; the output is
committed). Each item: a context, four candidate next sentences, the index of the true one.
The three wrong candidates are the true next sentences of other items, so every candidate is
fluent Korean and only the fit with the context tells them apart; choices and the answer's
position are drawn with a fixed seed."""
import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def main():
    pairs = [line.split("\t") for line in (HERE / "pairs.tsv").read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    rng = random.Random(15)
    rows = []
    for i, (context, nxt) in enumerate(pairs):
        others = [p[1] for j, p in enumerate(pairs) if j != i]
        choices = rng.sample(others, 3)
        label = rng.randrange(4)
        choices.insert(label, nxt)
        rows.append({"id": i, "context": context, "choices": choices, "label": label})
    out = HERE / "ko_next_sentence.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} items to {out}")


if __name__ == "__main__":
    main()
