"""Preference data for DPO: JSONL rows -> (prompt, chosen, rejected) token ids -> batches.

Row forms (one JSON object per line; TRL's preference forms):
  {"prompt": "...", "chosen": "...", "rejected": "..."}         the prompt is a user turn, each answer the
                                                                assistant's reply (as SFT's prompt/completion)
  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
                                                                conversational, explicit prompt
  {"chosen": [messages], "rejected": [messages]}                conversational, implicit prompt: the messages
                                                                both share up to their last turns

Every form goes through the one chat template (data/chat.py): the prompt ends with the generation
prompt ('<|im_start|>assistant\\n'), an answer is its tokens up to and with <|im_end|>, exactly what
the model generates. An answer that does not fit in max_seq_length after its prompt is cut; a prompt
that leaves no room for an answer is an error naming the line, as are a missing field, an empty
answer and identical answers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ..data.chat import encode_chat
from ..data.sft import IGNORE_INDEX, SFTBatches, SFTDataError, read_jsonl

__all__ = ["PreferenceError", "PreferenceDataset", "PreferenceBatches", "PreferenceBatch", "load_preference_split",
           "collate_pairs"]


class PreferenceError(SFTDataError):
    """Bad preference data: the file and line are named."""


@dataclass
class Pair:
    prompt: List[int]
    chosen: List[int]
    rejected: List[int]
    ref_logps: Optional[tuple] = None     # (chosen, rejected) under the reference model, when precomputed

    @property
    def ids(self) -> List[int]:           # for length ordering (SFTBatches): the longer of the two sequences
        return self.prompt + max(self.chosen, self.rejected, key=len)


def _is_messages(v) -> bool:
    return isinstance(v, list) and all(isinstance(m, dict) for m in v)


def _text_of(messages) -> str:
    return "".join(m.get("content", "") if isinstance(m.get("content"), str) else "" for m in messages)


def _split_implicit(chosen: list, rejected: list, where: str):
    """TRL's implicit prompt: the longest run of leading messages both conversations share."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1].get("role") == "assistant":  # the answers start at an assistant turn
        n -= 1
    if n == 0:
        raise PreferenceError(f"{where}: 'chosen' and 'rejected' share no prompt messages; give a 'prompt' field, "
                              "or start both conversations with the same user turn")
    return chosen[:n], chosen[n:], rejected[n:]


def row_messages(row, where: str):
    """(prompt messages, chosen messages, rejected messages) of one row."""
    if not isinstance(row, dict):
        raise PreferenceError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise PreferenceError(f"{where}: missing '{key}'; a preference row needs 'prompt', 'chosen' and "
                                  "'rejected' (or conversational 'chosen' and 'rejected' that share the prompt)")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if prompt is None:
        if not (_is_messages(chosen) and _is_messages(rejected)):
            raise PreferenceError(f"{where}: missing 'prompt' (only conversational rows, where 'chosen' and "
                                  "'rejected' are message lists, may leave it out)")
        prompt, chosen, rejected = _split_implicit(chosen, rejected, where)
    else:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if not (isinstance(value, str) or _is_messages(value)):
                raise PreferenceError(f"{where}: '{key}' must be a string or a list of messages, got "
                                      f"{type(value).__name__}")
        chosen = [{"role": "assistant", "content": chosen}] if isinstance(chosen, str) else chosen
        rejected = [{"role": "assistant", "content": rejected}] if isinstance(rejected, str) else rejected
        if not _is_messages(prompt) or not prompt:
            raise PreferenceError(f"{where}: 'prompt' must be a non-empty string or list of messages")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not value or not _text_of(value).strip():
            raise PreferenceError(f"{where}: '{key}' is empty; every pair needs two non-empty answers")
        if value[0].get("role") != "assistant":
            raise PreferenceError(f"{where}: '{key}' must start with the assistant's answer, not a "
                                  f"{value[0].get('role')!r} message")
    if chosen == rejected:
        raise PreferenceError(f"{where}: 'chosen' and 'rejected' are identical; a pair teaches nothing unless "
                              "the answers differ")
    return prompt, chosen, rejected


def encode_pair(row, tokenizer, where: str) -> tuple:
    """(prompt ids, chosen ids, rejected ids): the prompt with bos and the generation prompt, each answer
    the tokens that follow it in the rendered chat, up to and with its last <|im_end|>."""
    prompt, chosen, rejected = row_messages(row, where)
    try:
        prompt_ids, _ = encode_chat(prompt, tokenizer, add_generation_prompt=True)
        answers = []
        for answer in (chosen, rejected):
            full, _ = encode_chat(prompt + answer, tokenizer)
            assert full[:len(prompt_ids)] == prompt_ids  # the template renders the prompt the same either way
            tail = full[len(prompt_ids):]
            while tail and tail[-1] != tokenizer.im_end_id:  # the newline after the last <|im_end|>
                tail.pop()
            answers.append(tail)
    except ValueError as e:
        raise PreferenceError(f"{where}: {e}") from None
    return prompt_ids, answers[0], answers[1]


class PreferenceDataset:
    """The encoded pairs of one JSONL file. `truncated` counts pairs whose answers were cut to fit."""

    def __init__(self, path: str | os.PathLike, tokenizer, max_seq_length: int):
        self.path = Path(path)
        if not self.path.is_file():
            raise PreferenceError(f"{self.path}: file not found")
        self.max_seq_length = max_seq_length
        self.examples: List[Pair] = []
        self.truncated = 0
        for lineno, row in read_jsonl(self.path):
            where = f"{self.path}:{lineno}"
            prompt, chosen, rejected = encode_pair(row, tokenizer, where)
            room = max_seq_length + 1 - len(prompt)  # a sequence of n tokens is n - 1 inputs
            if room < 2:
                raise PreferenceError(f"{where}: the prompt is {len(prompt)} tokens, which leaves no room for an "
                                      f"answer in --max-seq-length {max_seq_length} (the model's context by "
                                      "default); shorten the prompt or drop the row")
            if len(chosen) > room or len(rejected) > room:
                chosen, rejected = chosen[:room], rejected[:room]
                self.truncated += 1
            self.examples.append(Pair(prompt, chosen, rejected))
        if not self.examples:
            raise PreferenceError(f"{self.path}: no rows (the file is empty); add one JSON object per line")
        self.rows = len(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        s = f"{self.path.name}: {len(self.examples)} pairs"
        if self.truncated:
            s += f", {self.truncated} with answers cut to --max-seq-length {self.max_seq_length}"
        return s

    def length_order(self) -> List[int]:
        return sorted(range(len(self.examples)), key=lambda i: (len(self.examples[i].ids), i))


@dataclass
class PreferenceBatch:
    """2B sequences: the B prompts with their chosen answers, then with their rejected ones."""
    x: torch.Tensor                      # [2B, L] inputs
    y: torch.Tensor                      # [2B, L] next tokens on the answers, IGNORE_INDEX elsewhere
    ref_logps: Optional[torch.Tensor]    # [2B] precomputed reference log-probabilities, or None

    @property
    def pairs(self) -> int:
        return self.x.shape[0] // 2


def collate_pairs(pairs: List[Pair], pad_id: int = 0) -> tuple:
    """(PreferenceBatch, input tokens): right-padded, invisible to the real tokens under causal attention."""
    seqs = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    L = max(len(a) + len(b) - 1 for a, b in seqs)
    x = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), L), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, answer) in enumerate(seqs):
        ids = prompt + answer
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        y[i, len(prompt) - 1:n] = torch.tensor(answer)
    ref = None
    if all(p.ref_logps is not None for p in pairs):
        ref = torch.tensor([p.ref_logps[0] for p in pairs] + [p.ref_logps[1] for p in pairs], dtype=torch.float64)
    return PreferenceBatch(x, y, ref), sum(len(a) + len(b) - 1 for a, b in seqs)


class PreferenceBatches(SFTBatches):
    """SFTBatches' endless, resumable, length-sorted stream, of preference pairs."""

    def collate_batch(self, examples: list) -> tuple:
        return collate_pairs(examples, self.pad_id)


def eval_pair_batches(dataset: PreferenceDataset, batch_size: int, max_batches: int = -1, pad_id: int = 0):
    """Length-sorted batches in a fixed order; max_batches -1 means all."""
    order = dataset.length_order()
    for n, i in enumerate(range(0, len(order), batch_size)):
        if 0 <= max_batches <= n:
            return
        yield collate_pairs([dataset.examples[j] for j in order[i:i + batch_size]], pad_id)[0]


def load_preference_split(data_dir: str | os.PathLike, split: str, tokenizer, max_seq_length: int) -> PreferenceDataset:
    d = Path(data_dir)
    if not d.is_dir():
        raise PreferenceError(f"--data {d}: no such directory (it must hold train.jsonl and valid.jsonl)")
    path = d / f"{split}.jsonl"
    if not path.is_file():
        found = sorted(p.name for p in d.iterdir())
        raise PreferenceError(f"--data {d}: no {split}.jsonl (found {found or 'nothing'}); the directory needs "
                              "train.jsonl and valid.jsonl (test.jsonl for --test) of preference pairs")
    return PreferenceDataset(path, tokenizer, max_seq_length)
