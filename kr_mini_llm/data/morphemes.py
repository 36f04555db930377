"""Morpheme boundaries that steer tokenizer training (Kiwi, from kiwipiepy).

A Korean word joins a stem and its particles and endings: 대한민국의 = 대한민국 + 의. BPE trained on
raw text learns pieces across those joins (`국의`). `mark_lines` writes DELIMITER at each morpheme
boundary inside a word, and SentencePiece's `pretokenization_delimiter` keeps every piece on one side
of it and drops it from the vocabulary. Only training sees the marks: the tokenizer stays one
SentencePiece model that encodes raw text by itself, with no Kiwi when it is used.

A boundary is marked only where the surface text splits cleanly: a contraction such as 가진다
(가지 + ㄴ다, the ending fused into 진) shares a character between morphemes and is left whole.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from ..errors import KrMiniLlmError

DELIMITER = "\ue000"   # a private-use character: never Korean text, and only in the training copy
PRETOKENIZERS = ("none", "kiwi")


def mark(line: str, spans: Sequence[tuple[int, int]]) -> str:
    """`line` with DELIMITER before every morpheme (start, length) that begins inside a word at a
    clean split: after the previous morpheme's last character and not next to a space."""
    cuts, end = [], 0
    for start, length in spans:
        if length <= 0:   # a morpheme with no surface of its own
            continue
        if (0 < start < len(line) and start >= end and (not cuts or start > cuts[-1])
                and not line[start - 1].isspace() and not line[start].isspace()):
            cuts.append(start)
        end = max(end, start + length)
    if not cuts:
        return line
    parts, prev = [], 0
    for c in cuts:
        parts.append(line[prev:c])
        prev = c
    parts.append(line[prev:])
    return DELIMITER.join(parts)


def kiwi_spans(num_workers: int = 1):
    """A function from lines to each line's morpheme spans [(start, length)], by Kiwi."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        raise KrMiniLlmError("pretokenize 'kiwi' needs the Korean morpheme analyser kiwipiepy (and its model, "
                             "about 100 MB): pip install 'kiwipiepy>=0.20'") from None
    kiwi = Kiwi(num_workers=num_workers)

    def spans(lines: Sequence[str]) -> Iterator[list[tuple[int, int]]]:
        for tokens in kiwi.tokenize(list(lines)):
            yield [(t.start, t.len) for t in tokens]
    return spans


def mark_lines(lines: Iterable[str], spans_of, batch: int = 1024) -> Iterator[str]:
    """Each line with its morpheme boundaries marked; `spans_of` as kiwi_spans returns. Lines go to
    the analyser in batches (Kiwi's workers share a batch)."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == batch:
            yield from map(mark, chunk, spans_of(chunk))
            chunk = []
    if chunk:
        yield from map(mark, chunk, spans_of(chunk))


def check_pretokenize(name: str) -> str:
    if name not in PRETOKENIZERS:
        raise KrMiniLlmError(f"pretokenize must be one of {', '.join(PRETOKENIZERS)}, got {name!r}")
    return name
