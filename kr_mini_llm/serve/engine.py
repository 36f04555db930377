"""Continuous batching: one model thread, one KV cache of `max_batch` rows, many requests.

The busy rows are always rows 0 .. n-1 of the cache, so a decode step runs the model once on
a view of exactly those rows. One loop iteration:

    admit    queued requests take free rows: their prompts are prefilled together (right-padded)
    sample   every busy row picks its next token (own sampling settings, own seeded RNG)
    emit     text pieces go to each request's stream (all of a step in one event-loop call);
             finished or cancelled requests leave, the busy rows behind them moving up
    decode   one forward of the model on [n, 1] new tokens, appending to the cache rows

A request therefore joins the running batch at the next step and leaves it as soon as it is done.

With speculative decoding (Engine(..., speculative="prompt_lookup"), inference/speculative.py),
each row carries its own drafter and its drafts: the decode step is one forward of [n, S] tokens
(each row's last token and its drafts, right-padded), and `sample` becomes verify: each row
accepts a run of its drafts plus one token by the rule of speculative.py, its cache row is cut to
what it accepted, and the run's tokens go out one by one exactly as plain steps would send them
(a stop string, eos or max_tokens inside the run ends the request there).

Sampling reuses inference/sampling.py exactly as the Generator calls it (same logits processing,
a torch.Generator seeded per request), so a greedy or seeded answer is the Generator's for the
same prompt and seed (up to float rounding differences between batch sizes).
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
from ..inference.sampling import (apply_frequency_presence_penalty, apply_repetition_penalty, greedy_pick, is_greedy,
                                  next_token_probs, sample_next)
from ..inference.speculative import Drafter, SpeculativeStats, check_speculative, truncate_rows, verify, verify_step
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
    """A request while it holds a row: its tokens, its RNG and penalty state, its text stream, and
    with speculative decoding its drafter and the drafts of the step in flight. It is the sampler
    speculative.verify reads (`greedy`, `penalised`, `probs`)."""

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
        self.tokens = list(prompt)  # the draft model catches up from these
        self.drafter: Drafter | None = None
        self.drafts: list[int] = []
        self.q: torch.Tensor | None = None  # the drafter's distributions of the drafts (None: one-hot)

    @property
    def greedy(self) -> bool:
        return is_greedy(self.params.temperature)

    def penalised(self, logits: torch.Tensor, drafted: list[int] = ()) -> torch.Tensor:
        """logits [1, V] of this row -> the logits it samples from, its penalties applied as if the
        `drafted` tokens had been generated too, cut to the decodable ids [1, pieces]."""
        p = self.params
        logits = logits.float()
        if self.seen is not None:
            seen = self.seen
            if drafted:
                seen = seen.clone()
                seen[0, list(drafted)] = True
            logits = apply_repetition_penalty(logits, seen.to(logits.device), p.repetition_penalty)
        if self.counts is not None:
            counts = self.counts
            if drafted:
                counts = counts.clone()
                for t in drafted:
                    counts[0, t] += 1
            logits = apply_frequency_presence_penalty(logits, counts.to(logits.device), p.frequency_penalty,
                                                      p.presence_penalty)
        return logits[:, :self.pieces].cpu()

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return next_token_probs(logits, self.params.temperature, self.params.top_k, self.params.top_p)

    def sample(self, logits: torch.Tensor) -> int:
        """logits [1, V] of this row -> its next token, as Generator.generate_ids picks it."""
        p = self.params
        return int(sample_next(self.penalised(logits), p.temperature, p.top_k, p.top_p, self.gen)[0])

    def draft(self, k: int) -> None:
        """This row's drafts for the next step: at most k, and at most the tokens still to come minus
        one (a step yields the accepted drafts and one token more)."""
        self.drafts, self.q = self.drafter.propose(self.tokens, min(k, self.params.max_tokens - self.generated - 1),
                                                   self, self.gen)

    def accept(self, token: int) -> Event | None:
        """Records the sampled token; returns the event to send (None when there is nothing new)."""
        self.generated += 1
        self.last = token
        self.tokens.append(token)
        if self.drafter is not None:
            self.drafter.extend([token])
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

    speculative: None, "prompt_lookup" or "draft" (the generator's draft model, one draft cache per
    request): up to `num_draft_tokens` drafts per row and step; prompt lookup matches `ngram` tokens.
    """

    def __init__(self, generator, max_batch: int = 8, speculative: str | None = None, num_draft_tokens: int = 5,
                 ngram: int = 3):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        check_speculative(speculative, num_draft_tokens, ngram, getattr(generator, "draft", None) is not None)
        self.speculative, self.num_draft_tokens, self.ngram = speculative, num_draft_tokens, ngram
        self.draft = generator.draft if speculative == "draft" else None
        self.stats = SpeculativeStats()  # drafts proposed and accepted, rows verified, tokens made
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
        self._last_logits: torch.Tensor | None = None  # [n, S, V] of the busy rows, from the last decode step

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
        greedy = None if self.speculative else greedy_pick(logits[:, 0, :self.tokenizer.vocab_size]).tolist()
        keep = []
        for i, seq in enumerate(self._rows):
            if seq.stream.cancelled:
                continue
            try:
                if self.speculative:
                    run = self._verify(i, seq, logits[i])
                else:
                    run = [greedy[i] if seq.params.plain_greedy else seq.sample(logits[i, :1])]
                finished = False
                for token in run:  # one event per token, as plain steps send them
                    event = seq.accept(token)
                    if event is not None:
                        self._outbox.add(seq.stream, event)
                        finished = event.finish_reason is not None
                        if finished:
                            break
                if self.speculative and not finished:
                    seq.draft(self.num_draft_tokens)
            except Exception as e:  # this request's sampling, decoding or drafting failed: end it alone
                log.exception("sampling failed; ending that request only")
                self._fail([seq], f"generation failed for this request: {type(e).__name__}: {e}")
                continue
            if not finished:
                keep.append(i)
        self._release(keep)
        self._outbox.send()  # before the decode step: clients see this token while the next one is computed
        if self._rows:
            n = len(self._rows)
            self._last_logits, drafts = verify_step(self.model, self.cache.rows(0, n), [s.last for s in self._rows],
                                                    [s.drafts for s in self._rows], self.device)
            for seq, d in zip(self._rows, drafts):  # cut where the padded step would not fit the cache
                if len(d) < len(seq.drafts):
                    seq.drafts, seq.q = d, None if seq.q is None else seq.q[:len(d)]

    def _verify(self, i: int, seq: _Sequence, logits: torch.Tensor) -> list[int]:
        """Row i's run of new tokens from its logits [S, V]: the drafts it accepts and one more. Its
        cache row keeps the last token and the accepted drafts."""
        if seq.drafter is None:  # the first step of a request (from its prefill)
            seq.drafter = Drafter(self.speculative, seq.prompt, self.ngram, self.draft,
                                  len(seq.prompt) + seq.params.max_tokens)
        n, nxt = verify(seq, logits, seq.drafts, seq.q, seq.gen)
        truncate_rows(self.cache.rows(i, i + 1), [len(seq.prompt) + seq.generated + n])
        self.stats.rounds += 1
        self.stats.proposed += len(seq.drafts)
        self.stats.accepted += n
        self.stats.tokens += n + 1
        return seq.drafts[:n] + [nxt]

    def _admit(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """Prefills queued requests into free rows, all in one forward (right-padded to the longest
        prompt); returns the logits of all busy rows [n, S, V]."""
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
            out = self.model(ids.to(self.device), kv_cache=view, logits_at=lengths - 1)  # [m, 1, V]
        except Exception as e:  # these requests fail; the running ones go on
            log.exception("prefill failed")
            self._fail(new, f"prefill failed: {e}")
            return logits
        # Each row holds its own prompt; the padding K/V past it is overwritten by the next tokens.
        view.lens.copy_(lengths.to(view.lens.device))
        self._rows.extend(new)
        if logits is None:
            return out
        # The running rows' logits of a speculative step have S positions; new rows read only the first.
        return torch.cat([logits, out.expand(-1, logits.shape[1], -1)])

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
