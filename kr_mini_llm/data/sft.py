"""Supervised fine-tuning data: JSONL rows -> token ids and labels -> length-sorted batches.

Row forms (one JSON object per line; a file may mix the chat forms):
  {"text": "..."}                                   plain text, every token trained
  {"messages": [{"role": ..., "content": ...}, ...]}  a chat, rendered by data/chat.py
  {"prompt": "...", "completion": "..."}            a user turn and the assistant's answer
  {"instruction": "...", "input": "...", "output": "..."}  the instruction form ("input" optional):
                                                    user = instruction (+ blank line + input)

Every chat form goes through `encode_chat`, the one chat template that generation uses too.
With mask_prompt the loss is on the assistant tokens only (contents and their <|im_end|>);
otherwise on every token, as mlx-lm does. Labels are already shifted: y[t] is the token after
x[t]; -100 marks positions without loss (prompt, padding).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import KrMiniLlmError
from .chat import encode_chat

__all__ = ["SFTDataError", "SFTDataset", "SFTBatches", "eval_batches", "row_to_ids", "collate",
           "IGNORE_INDEX", "load_split"]

IGNORE_INDEX = -100


class SFTDataError(KrMiniLlmError, ValueError):
    """Bad fine-tuning data: the file and line are named."""


def _messages(row: dict, where: str) -> Optional[List[Dict[str, str]]]:
    def text(key, required=True):
        v = row.get(key, "" if not required else None)
        if not isinstance(v, str):
            raise SFTDataError(f"{where}: '{key}' must be a string, got {type(v).__name__}")
        return v

    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise SFTDataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        return msgs
    if "prompt" in row or "completion" in row:
        if "prompt" not in row or "completion" not in row:
            missing = "completion" if "prompt" in row else "prompt"
            raise SFTDataError(f"{where}: a prompt/completion row needs both fields; '{missing}' is missing")
        return [{"role": "user", "content": text("prompt")}, {"role": "assistant", "content": text("completion")}]
    if "instruction" in row or "output" in row:
        if "instruction" not in row or "output" not in row:
            missing = "output" if "instruction" in row else "instruction"
            raise SFTDataError(f"{where}: an instruction row needs 'instruction' and 'output' ('input' is "
                               f"optional); '{missing}' is missing")
        user = text("instruction")
        extra = text("input", required=False)
        if extra.strip():
            user = f"{user}\n\n{extra}"
        return [{"role": "user", "content": user}, {"role": "assistant", "content": text("output")}]
    return None


def row_to_ids(row: dict, tokenizer, where: str = "<row>") -> Tuple[List[int], List[int], str]:
    """(ids, answer mask, form) of one row; ids start with bos. form: 'text' or 'chat'."""
    if not isinstance(row, dict):
        raise SFTDataError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    msgs = _messages(row, where)
    if msgs is not None:
        try:
            ids, mask = encode_chat(msgs, tokenizer, add_bos=True)
        except ValueError as e:
            raise SFTDataError(f"{where}: {e}") from None
        return ids, mask, "chat"
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise SFTDataError(f"{where}: 'text' must be a non-empty string")
        ids = [tokenizer.bos_id] + tokenizer.encode(row["text"]) + [tokenizer.eos_id]
        return ids, [1] * len(ids), "text"
    raise SFTDataError(f"{where}: the row has none of the supported forms (keys found: {sorted(row)}); use "
                       "{\"text\"}, {\"messages\"}, {\"prompt\", \"completion\"} or "
                       "{\"instruction\", \"input\", \"output\"}")


def read_jsonl(path: Path) -> Iterator[Tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise SFTDataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


@dataclass
class Example:
    ids: List[int]      # the model input is ids[:-1], the targets ids[1:]
    labels: List[int]   # same length as ids[:-1]; IGNORE_INDEX where there is no loss


class SFTDataset:
    """The encoded rows of one JSONL file, truncated to max_seq_length input tokens.

    `truncated` counts rows cut to fit, `dropped` rows left with no trained token (all prompt)."""

    def __init__(self, path: str | os.PathLike, tokenizer, max_seq_length: int, mask_prompt: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise SFTDataError(f"{self.path}: file not found")
        self.max_seq_length, self.mask_prompt = max_seq_length, mask_prompt
        self.examples: List[Example] = []
        self.truncated = self.dropped = self.rows = 0
        for lineno, row in read_jsonl(self.path):
            where = f"{self.path}:{lineno}"
            ids, mask, form = row_to_ids(row, tokenizer, where)
            if mask_prompt and form == "text":
                raise SFTDataError(f"{where}: --mask-prompt needs rows with a prompt and an answer "
                                   "(messages, prompt/completion or instruction/output), not {\"text\"}")
            self.rows += 1
            if len(ids) - 1 > max_seq_length:
                ids, mask = ids[:max_seq_length + 1], mask[:max_seq_length + 1]
                self.truncated += 1
            labels = [t if (m or not mask_prompt) else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
            if len(ids) < 2 or all(t == IGNORE_INDEX for t in labels):
                self.dropped += 1
                continue
            self.examples.append(Example(ids, labels))
        if self.rows == 0:
            raise SFTDataError(f"{self.path}: no rows (the file is empty); add one JSON object per line")
        if not self.examples:
            raise SFTDataError(f"{self.path}: all {self.rows} rows lost their answer to truncation at "
                               f"--max-seq-length {max_seq_length}; raise it or shorten the prompts")

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        s = f"{self.path.name}: {self.rows} rows, {len(self.examples)} used"
        if self.truncated:
            s += f", {self.truncated} longer than --max-seq-length {self.max_seq_length} (truncated)"
        if self.dropped:
            s += f", {self.dropped} dropped (no answer tokens left)"
        return s

    def length_order(self) -> List[int]:
        return sorted(range(len(self.examples)), key=lambda i: (len(self.examples[i].ids), i))


def collate(examples: List[Example], pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(x, y, tokens): right-padded [B, L] inputs and labels, and the number of real input tokens.
    Right padding is invisible to the real tokens under causal attention."""
    L = max(len(e.ids) - 1 for e in examples)
    x = torch.full((len(examples), L), pad_id, dtype=torch.long)
    y = torch.full((len(examples), L), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.ids) - 1
        x[b, :n] = torch.tensor(e.ids[:-1])
        y[b, :n] = torch.tensor(e.labels)
    return x, y, sum(len(e.ids) - 1 for e in examples)


class SFTBatches:
    """Endless training batches: rows sorted by length, cut into batches of neighbours (little
    padding), the batch order shuffled each epoch with (seed, epoch). The stream is a pure
    function of (seed, epoch, position), so state_dict() is two integers and a resumed run gets
    exactly the batches of an uninterrupted one."""

    def __init__(self, dataset: SFTDataset, batch_size: int, seed: int = 0, pad_id: int = 0):
        if len(dataset) < batch_size:
            raise SFTDataError(f"{dataset.path}: {len(dataset)} usable rows, fewer than --batch-size {batch_size}; "
                               "add rows or lower --batch-size")
        order = dataset.length_order()
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.dataset, self.seed, self.pad_id = dataset, seed, pad_id
        self.epoch, self.position, self.tokens = 0, 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> List[int]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def __iter__(self):
        return self

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        idx = self.batches[self._order[self.position]]
        self.position += 1
        batch, tokens = self.collate_batch([self.dataset.examples[i] for i in idx])
        self.tokens += tokens
        return batch

    def collate_batch(self, examples: list) -> tuple:
        """(the batch a training step takes, its input tokens); preference data collates its own."""
        x, y, tokens = collate(examples, self.pad_id)
        return (x, y), tokens

    def pop_tokens(self) -> int:
        """Input tokens (padding excluded) of the batches taken since the last call."""
        tokens, self.tokens = self.tokens, 0
        return tokens

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)


def eval_batches(dataset: SFTDataset, batch_size: int, max_batches: int = -1,
                 pad_id: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Length-sorted batches in a fixed order; max_batches -1 means all."""
    order = dataset.length_order()
    for n, i in enumerate(range(0, len(order), batch_size)):
        if 0 <= max_batches <= n:
            return
        x, y, _ = collate([dataset.examples[j] for j in order[i:i + batch_size]], pad_id)
        yield x, y


def load_split(data_dir: str | os.PathLike, split: str, tokenizer, max_seq_length: int, mask_prompt: bool,
               required: bool = True) -> Optional[SFTDataset]:
    d = Path(data_dir)
    if not d.is_dir():
        raise SFTDataError(f"--data {d}: no such directory (it must hold train.jsonl and valid.jsonl)")
    path = d / f"{split}.jsonl"
    if not path.is_file():
        if not required:
            return None
        found = sorted(p.name for p in d.iterdir())
        raise SFTDataError(f"--data {d}: no {split}.jsonl (found {found or 'nothing'}); the directory needs "
                           "train.jsonl and valid.jsonl (test.jsonl for --test), one JSON object per line")
    return SFTDataset(path, tokenizer, max_seq_length, mask_prompt)
