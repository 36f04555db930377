"""A request's prompt as token ids: bounded before any tokenizing, built off the event loop.

Templating and tokenizing cost CPU time in proportion to a request's size, so the routes run
these functions in a worker thread (the event loop keeps streaming the other answers). Before
tokenizing, text that cannot fit is refused by its length alone: one token covers at most
`max_piece_chars` characters (the tokenizer's longest piece), so text longer than the context
times that is refused without being read, and every chat message costs at least 3 tokens
(<|im_start|>, its role, <|im_end|>).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from ..data.chat import encode_chat
from ..errors import KrMiniLlmError
from .engine import ContextLengthError

MIN_TOKENS_PER_MESSAGE = 3  # <|im_start|>, the role (at least one piece), <|im_end|>


class InvalidPrompt(KrMiniLlmError, ValueError):
    """A prompt of token ids that the model cannot read."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_tokens: int        # what the answer may use
    dropped: int = 0       # oldest messages left out to fit the context (truncation="auto")


class Prompts:
    """Builds prompts for one engine: its tokenizer, context and exact length check."""

    def __init__(self, engine):
        self.tok = engine.tokenizer
        self.context_length = engine.context_length
        self.vocab_size = engine.config.vocab_size
        self.check_fits = engine.check_fits
        self.max_piece_chars = max(len(self.tok.id_to_piece(i)) for i in range(self.tok.vocab_size))
        self.max_chars = self.context_length * self.max_piece_chars

    def _check_chars(self, chars: int, what: str) -> None:
        if chars > self.max_chars:
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens, and {what} of {chars} "
                f"characters cannot fit it (a token of this tokenizer covers at most {self.max_piece_chars} "
                f"characters, so at most {self.max_chars} characters fit). Please shorten it.")

    def _answer_room(self, prompt_tokens: int, max_tokens: int | None) -> int:
        return max_tokens if max_tokens is not None else max(self.context_length - prompt_tokens, 1)

    def completion(self, prompt: str | Sequence[int], max_tokens: int | None) -> Prompt:
        """A text prompt gets bos first (as Generator.generate encodes it); token ids are used as they are."""
        if isinstance(prompt, str):
            self._check_chars(len(prompt), "the prompt")
            ids = [self.tok.bos_id] + self.tok.encode(prompt)
        else:
            ids = list(prompt)
            bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise InvalidPrompt(f"token id {bad} is outside this model's vocabulary (0 to {self.vocab_size - 1})")
        max_tokens = self._answer_room(len(ids), max_tokens)
        self.check_fits(len(ids), max_tokens)
        return Prompt(ids, max_tokens)

    def chat(self, messages: Sequence[dict], max_tokens: int | None, truncate: bool = False) -> Prompt:
        """The chat template's ids, ending with the assistant's prompt. With `truncate`, the oldest
        messages that are not system messages are dropped until the rest fits with `max_tokens` of
        answer, and if even the newest message alone leaves less room, max_tokens is capped to it."""
        if truncate:
            return self._fit_chat(messages, max_tokens)
        lower = 1 + MIN_TOKENS_PER_MESSAGE * len(messages) + 2  # bos, the messages, <|im_start|>assistant
        if lower + (max_tokens or 1) > self.context_length:
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens, and {len(messages)} "
                f"messages take at least {lower} tokens (at least {MIN_TOKENS_PER_MESSAGE} each) before the "
                f"{max_tokens or 1}-token answer. Please send fewer messages.")
        self._check_chars(sum(len(m["content"]) for m in messages), "the messages' text")
        ids, _ = encode_chat(messages, self.tok, add_generation_prompt=True)
        max_tokens = self._answer_room(len(ids), max_tokens)
        self.check_fits(len(ids), max_tokens)
        return Prompt(ids, max_tokens)

    def _tokens(self, message: dict) -> int | None:
        """Tokens `message` adds to a conversation; None when its length alone cannot fit."""
        if len(message["content"]) > self.max_chars:
            return None
        return len(encode_chat([message], self.tok, add_bos=False)[0])

    def _fit_chat(self, messages: Sequence[dict], max_tokens: int | None) -> Prompt:
        system = [i for i, m in enumerate(messages) if m["role"] == "system"]
        others = [i for i, m in enumerate(messages) if m["role"] != "system"]
        self._check_chars(sum(len(messages[i]["content"]) for i in system), "the system messages' text")
        if others:
            self._check_chars(len(messages[others[-1]]["content"]), "the newest message")
        used = len(encode_chat([messages[i] for i in system], self.tok, add_generation_prompt=True)[0])
        want = max_tokens or 1
        kept = []
        for i in reversed(others):  # newest first: the work stops where the context is full
            n = self._tokens(messages[i])
            if n is None or (kept and used + n + want > self.context_length):
                break
            kept.append(i)  # the newest always: if it alone is too long, check_fits below says so
            used += n
        keep = set(system) | set(kept)
        fitted = [m for i, m in enumerate(messages) if i in keep]
        ids, _ = encode_chat(fitted, self.tok, add_generation_prompt=True)
        room = self.context_length - len(ids)
        if max_tokens is not None and room >= 1:
            max_tokens = min(max_tokens, room)
        max_tokens = self._answer_room(len(ids), max_tokens)
        self.check_fits(len(ids), max_tokens)  # the newest message (or the system's) alone is too long
        return Prompt(ids, max_tokens, dropped=len(messages) - len(fitted))
