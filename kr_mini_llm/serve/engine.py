"""Continuous batching: one model thread, one KV cache of `max_batch` rows, many requests.

The busy rows are always rows 0 .. n-1 of the cache, so a decode step runs the model once on
a view of exactly those rows. One loop iteration:

    admit    queued requests take free rows: their prompts are prefilled together (right-padded)
    sample   every busy row picks its next token (own sampling settings, own seeded RNG)
    emit     text pieces go to each request's stream (all of a step in one event-loop call);
             finished or cancelled requests leave, the busy rows behind them moving up
    decode   one forward of the model on [n, 1] new tokens, appending to the cache rows

A request therefore joins the running batch at the next step and leaves it as soon as it is
done. Sampling reuses inference/sampling.py exactly as the Generator calls it (same logits
processing, a torch.Generator seeded per request), so a greedy or seeded answer is the
Generator's for the same prompt and seed (up to float rounding differences between batch sizes).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import threading
from typing import Sequence

import torch

from ..errors import KrMiniLlmError
from ..inference.sampling import (apply_frequency_presence_penalty, apply_repetition_penalty, is_greedy,
                                  sample_next)
from ..model import KVCache
from .text_stream import TextStream

log = logging.getLogger(__name__)


class ContextLengthError(KrMiniLlmError, ValueError):
    """A prompt plus its max_tokens does not fit the model's context."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # end the answer (not part of its text): eos, <|im_end|>

    @property
    def plain_greedy(self) -> bool:
        return (is_greedy(self.temperature) and self.repetition_penalty == 1.0 and self.frequency_penalty == 0.0
                and self.presence_penalty == 0.0)


@dataclasses.dataclass
class Event:
    """What a request's stream receives: new text, and at the end a finish reason (or an error)."""
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class Stream:
    """One request's output, read by the event loop that submitted it (async iteration)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self._ended = False

    def cancel(self) -> None:
        """The client went away: the model thread frees the row at its next step."""
        self.cancelled = True

    def put(self, event: Event) -> None:
        """Delivers an event; call from the stream's event loop (the model thread goes through _Outbox)."""
        self._queue.put_nowait(event)

    def ready(self) -> list[Event]:
        """The events already queued (without waiting), up to the last one of the answer."""
        out = []
        while not self._ended and not self._queue.empty():
            out.append(self._queue.get_nowait())
            self._ended = out[-1].finish_reason is not None or out[-1].error is not None
        return out

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event.finish_reason is not None or event.error is not None:
            self._ended = True
        return event


class _Outbox:
    """Events of one model step, handed to each event loop in one call: waking a loop costs a
    system call, and once per token per request it would cost more than a small model's step."""

    def __init__(self):
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Event]]] = {}

    def add(self, stream: Stream, event: Event) -> None:
        self._items.setdefault(stream._loop, []).append((stream, event))

    def send(self) -> None:
        for loop, items in self._items.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                for stream, _ in items:
                    stream.cancelled = True
        self._items = {}


def _deliver(items: list[tuple[Stream, Event]]) -> None:
    for stream, event in items:
        stream.put(event)


class _Sequence:
    """A request while it holds a row: its tokens, its RNG and penalty state, its text stream."""

    def __init__(self, prompt: list[int], params: SamplingParams, stream: Stream, tokenizer, vocab_size: int):
        self.prompt, self.params, self.stream = prompt, params, stream
        self.text = TextStream(tokenizer, params.stop)
        self.pieces = tokenizer.vocab_size  # ids past it cannot be decoded (the model may have more rows)
        self.generated = 0
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(params.seed if params.seed is not None else random.randrange(2**63))
        self.seen = self.counts = None
        if params.repetition_penalty != 1.0:  # as the Generator: prompt tokens count as seen
            self.seen = torch.zeros(1, vocab_size, dtype=torch.bool)
            self.seen[0, prompt] = True
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
            self.counts = torch.zeros(1, vocab_size)
        self.last = prompt[-1]

    def sample(self, logits: torch.Tensor) -> int:
        """logits [1, V] of this row -> its next token, as Generator.generate_ids picks it."""
        p = self.params
        logits = logits.float()
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen.to(logits.device), p.repetition_penalty)
        if self.counts is not None:
            logits = apply_frequency_presence_penalty(logits, self.counts.to(logits.device), p.frequency_penalty,
                                                      p.presence_penalty)
        return int(sample_next(logits[:, :self.pieces].cpu(), p.temperature, p.top_k, p.top_p, self.gen)[0])

    def accept(self, token: int) -> Event | None:
        """Records the sampled token; returns the event to send (None when there is nothing new)."""
        self.generated += 1
        self.last = token
        if self.seen is not None:
            self.seen[0, token] = True
        if self.counts is not None:
            self.counts[0, token] += 1
        finish = None
        if token in self.params.stop_token_ids:
            finish, piece = "stop", self.text.flush()
        else:
            piece = self.text.push(token)
            if self.text.stopped:
                finish = "stop"
            elif self.generated >= self.params.max_tokens:
                finish, piece = "length", piece + self.text.flush()
        if finish is None and not piece:
            return None
        return Event(piece, finish, len(self.prompt), self.generated)


class Engine:
    """Serves generation requests from one model thread with continuous batching.

    engine = Engine(generator, max_batch=8); engine.start()
    stream = engine.submit(prompt_ids, SamplingParams(max_tokens=64))   # from a running event loop
    async for event in stream: ...
    """

    def __init__(self, generator, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = generator.model
        self.tokenizer = generator.tokenizer
        self.device = generator.device
        self.config = self.model.config
        self.max_batch = max_batch
        self.cache = KVCache.for_model(self.config, max_batch, self.context_length,  # the Generator's cache dtype
                                       dtype=generator._cache_dtype(), device=self.device)
        self._rows: list[_Sequence] = []
        self._queue: collections.deque[_Sequence] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._outbox = _Outbox()
        self._last_logits: torch.Tensor | None = None  # of the busy rows, from the last decode step

    @property
    def context_length(self) -> int:
        return self.config.max_seq_length

    @property
    def busy_rows(self) -> int:
        return len(self._rows)

    @property
    def queued(self) -> int:
        """Requests waiting for a row whose client is still there."""
        with self._wake:
            return sum(not seq.stream.cancelled for seq in self._queue)

    # -- the event loop's side ---------------------------------------------------------------
    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        ctx = self.context_length
        if prompt_tokens + max_tokens > ctx:
            raise ContextLengthError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
                f"completion). Please reduce the length of the prompt or max_tokens.")

    def submit(self, prompt: Sequence[int], params: SamplingParams) -> Stream:
        """Queues a request; call from the event loop that will read the returned stream."""
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        self.check_fits(len(prompt), params.max_tokens)
        stream = Stream(asyncio.get_running_loop())
        seq = _Sequence(list(prompt), params, stream, self.tokenizer, self.config.vocab_size)
        with self._wake:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._queue.append(seq)
            self._wake.notify()
        return stream

    def start(self) -> "Engine":
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="kr-mini-llm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- the model thread ----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._queue and not self._rows:
                        self._wake.wait()
                    if self._stopping:
                        break
                try:
                    self._step()
                except Exception as e:  # never let one bad step kill the server: fail the batch, go on
                    log.exception("generation step failed; ending the requests in the batch")
                    self._fail(self._rows, f"generation failed: {e}")
                    self._rows.clear()
                    self._last_logits = None
                    self.cache.reset()
        self._fail(self._rows + list(self._queue), "the server is shutting down")
        self._rows.clear()
        self._queue.clear()

    def _step(self) -> None:
        logits = self._admit(self._last_logits)
        self._last_logits = None
        if not self._rows:
            return
        # Only ids the tokenizer can decode (as Generator.generate_ids): a model may have more rows.
        greedy = logits[:, :self.tokenizer.vocab_size].argmax(-1).tolist()
        keep = []
        for i, seq in enumerate(self._rows):
            if seq.stream.cancelled:
                continue
            try:
                token = greedy[i] if seq.params.plain_greedy else seq.sample(logits[i:i + 1])
                event = seq.accept(token)
            except Exception as e:  # this request's sampling or decoding failed: end it alone
                log.exception("sampling failed; ending that request only")
                self._fail([seq], f"generation failed for this request: {type(e).__name__}: {e}")
                continue
            if event is not None:
                self._outbox.add(seq.stream, event)
            if event is None or event.finish_reason is None:
                keep.append(i)
        self._release(keep)
        self._outbox.send()  # before the decode step: clients see this token while the next one is computed
        if self._rows:
            n = len(self._rows)
            tokens = torch.tensor([[s.last] for s in self._rows], device=self.device)
            self._last_logits = self.model(tokens, kv_cache=self.cache.rows(0, n), last_logits_only=True)[:, -1]

    def _admit(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """Prefills queued requests into free rows, all in one forward (right-padded to the longest
        prompt); returns the logits of all busy rows [n, V]."""
        new: list[_Sequence] = []
        with self._wake:
            while self._queue and len(self._rows) + len(new) < self.max_batch:
                seq = self._queue.popleft()
                if not seq.stream.cancelled:
                    new.append(seq)
        if not new:
            return logits
        first = len(self._rows)
        view = self.cache.rows(first, first + len(new))
        lengths = torch.tensor([len(s.prompt) for s in new])
        ids = torch.zeros(len(new), int(lengths.max()), dtype=torch.long)
        for i, s in enumerate(new):
            ids[i, :len(s.prompt)] = torch.tensor(s.prompt)
        view.lens.zero_()
        try:
            out = self.model(ids.to(self.device), kv_cache=view, logits_at=lengths - 1)[:, -1]
        except Exception as e:  # these requests fail; the running ones go on
            log.exception("prefill failed")
            self._fail(new, f"prefill failed: {e}")
            return logits
        # Each row holds its own prompt; the padding K/V past it is overwritten by the next tokens.
        view.lens.copy_(lengths.to(view.lens.device))
        self._rows.extend(new)
        return out if logits is None else torch.cat([logits, out])

    def _release(self, keep: list[int]) -> None:
        """Keeps rows `keep` (ascending), moving them down so the busy rows stay 0 .. n-1."""
        rows = []
        for dst, src in enumerate(keep):
            if src != dst:
                self.cache.move_row(src, dst)
            rows.append(self._rows[src])
        self._rows = rows

    def _fail(self, seqs, message: str) -> None:
        for seq in seqs:
            self._outbox.add(seq.stream, Event(error=message, prompt_tokens=len(seq.prompt),
                                               completion_tokens=seq.generated))
        self._outbox.send()
