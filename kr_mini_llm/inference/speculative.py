"""Speculative decoding: draft a few tokens cheaply, verify them all in one forward of the model.

A decode step reads every weight once for one token; verifying k drafted tokens reads them once
for k + 1 (the last accepted token and the k drafts go through the model as one step of S = k + 1
new tokens over the KV cache, which attends causally within the step). Drafts come from

  prompt_lookup  the sequence itself: the tokens that followed the latest earlier occurrence of
                 its last `ngram` tokens (fewer when no such n-gram occurs; none when no single
                 token recurs). No second model; pays on text that repeats itself.
  draft          a smaller model with the same tokenizer, decoding k tokens ahead with its own cache.

Verification keeps the output distribution that of the model alone:
  greedy    the drafts are accepted up to the first one that is not the model's argmax, then the
            model's own token follows: the same tokens as plain greedy decoding.
  sampling  the standard rejection rule: draft x is accepted with probability min(1, p(x) / q(x)),
            p the model's and q the drafter's distribution (prompt lookup: q is one-hot on x); on
            rejection the token is drawn from norm(max(0, p - q)) and the round ends; when all k
            are accepted a k+1-th token is drawn from p. p and q are sampling.py's distributions,
            with the repetition penalty, temperature, top-k and top-p of plain sampling.
The rows of rejected drafts are dropped from the caches by shortening their lengths.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from ..model import KVCache
from .sampling import apply_repetition_penalty, is_greedy, next_token_probs, sample_next

if TYPE_CHECKING:
    from .generator import Generator

MODES = ("prompt_lookup", "draft")


@dataclass
class SpeculativeStats:
    """What one speculative generation did: `proposed` drafts, of which `accepted` were kept, over
    `rounds` verification forwards of the model (plain steps included), for `tokens` new tokens."""
    proposed: int = 0
    accepted: int = 0
    rounds: int = 0
    tokens: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.tokens / self.rounds if self.rounds else 0.0


def check_speculative(speculative: str | None, num_draft_tokens: int, ngram: int, has_draft: bool) -> None:
    """ValueError naming the speculative setting that cannot be used."""
    if speculative is None:
        return
    if speculative not in MODES:
        raise ValueError(f"speculative must be one of {', '.join(MODES)} or None, got {speculative!r}")
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be a whole number >= 1, got {num_draft_tokens!r}")
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"ngram must be a whole number >= 1, got {ngram!r}")
    if speculative == "draft" and not has_draft:
        raise ValueError("speculative='draft' needs a draft model, a smaller one trained with the same "
                         "tokenizer (--draft-model PATH; Generator.from_pretrained(..., draft_model=PATH))")


class PromptLookup:
    """Drafts from the sequence itself. Keeps, per n-gram of 1..ngram tokens, where it last ended
    with a token after it, so a lookup costs `ngram` dictionary reads whatever the length."""

    def __init__(self, tokens: list[int], ngram: int):
        self.ngram = ngram
        self.tokens: list[int] = []
        self.last: dict[tuple, int] = {}  # n-gram -> the position just after its latest occurrence
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            end = len(self.tokens)  # the n-grams ending here now have a next token: t
            for n in range(1, min(self.ngram, end) + 1):
                self.last[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(t)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix found."""
        for n in range(min(self.ngram, len(self.tokens)), 0, -1):
            at = self.last.get(tuple(self.tokens[-n:]))
            if at is not None:
                return self.tokens[at:at + k]
        return []


class _Sampling:
    """The plain sampler's settings, applied to logits rows as generate_ids applies them."""

    def __init__(self, temperature, top_k, top_p, repetition_penalty, pieces):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.penalty, self.pieces = repetition_penalty, pieces
        self.greedy = is_greedy(temperature)

    def logits(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """logits [S, V] with seen [S, pieces] -> the penalised logits of the decodable ids [S, pieces]
        (the penalty is per token, so cutting the ids no tokenizer piece has first changes nothing)."""
        logits = logits[:, :self.pieces].float().cpu()
        if self.penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, self.penalty)
        return logits

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return next_token_probs(logits, self.temperature, self.top_k, self.top_p)


def verify(s: _Sampling, logits: torch.Tensor, seen: torch.Tensor, drafts: list[int], q: torch.Tensor | None,
           gen: torch.Generator) -> tuple[int, int]:
    """(how many drafts are accepted, the token after them) from the model's logits [k+1, V] at the
    last accepted token and at each draft; seen [1, pieces]: the ids so far (for the repetition
    penalty, which at row i counts the first i drafts too, as plain decoding would have by then).
    q [k, pieces]: the drafter's distributions (None: drafts chosen deterministically, q one-hot).
    Rows are processed one at a time, up to the first rejection (one-row ops stay single-threaded)."""
    k = len(drafts)
    seen = seen.clone()
    for i in range(k + 1):
        row = s.logits(logits[i:i + 1], seen)
        if s.greedy:
            best = int(row.argmax(-1))
            if i == k or best != drafts[i]:
                return i, best
        else:
            p = s.probs(row)[0]
            if i == k:
                return k, int(torch.multinomial(p, 1, generator=gen))
            d = drafts[i]
            qd = 1.0 if q is None else float(q[i, d])
            if not float(torch.rand(1, generator=gen)) < float(p[d]) / qd:
                if q is None:
                    residual = p.clone()
                    residual[d] = 0.0
                else:
                    residual = (p - q[i]).clamp_(min=0.0)
                if not float(residual.sum()) > 0.0:  # p == q up to rounding: rejection had probability ~0
                    residual = p
                return i, int(torch.multinomial(residual, 1, generator=gen))
        seen[0, drafts[i]] = True
    raise AssertionError("unreachable: row k always returns")


class _DraftModel:
    """The draft model's side: its own cache, holding the accepted sequence but its last token."""

    def __init__(self, draft: "Generator", total: int, cache_dtype):
        self.model, self.device = draft.model, draft.device
        self.ctx = draft.model.config.max_seq_length
        self.cache = KVCache.for_model(draft.model.config, 1, min(total, self.ctx), dtype=cache_dtype,
                                       device=self.device)

    def room(self, seq_len: int) -> int:
        """How many drafts fit: the cache takes the sequence plus k - 1 drafts (the k-th is not fed)."""
        return self.cache.max_length - seq_len + 1

    def propose(self, seq: list[int], k: int, s: _Sampling, seen: torch.Tensor,
                gen: torch.Generator) -> tuple[list[int], torch.Tensor | None]:
        self.cache.truncate(len(seq) - 1)  # drop drafts the model did not accept
        feed = seq[int(self.cache.lens[0]):]  # the accepted tokens it has not seen (1 or 2, or the prompt)
        drafts, qs = [], []
        seen = seen.clone()
        for _ in range(k):
            t = torch.tensor([feed], device=self.device)
            logits = s.logits(self.model(t, kv_cache=self.cache, last_logits_only=True)[:, -1], seen)
            if s.greedy:
                d = int(logits.argmax(-1))
            else:
                qs.append(s.probs(logits)[0])
                d = int(torch.multinomial(qs[-1], 1, generator=gen))
            drafts.append(d)
            seen[0, d] = True
            feed = [d]
        return drafts, (torch.stack(qs) if qs else None)


@torch.inference_mode()
def speculative_ids(g: "Generator", prompt: list[int], max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, repetition_penalty: float, seed: int | None,
                    stop_at_eos: bool, speculative: str, num_draft_tokens: int, ngram: int,
                    stats: SpeculativeStats | None) -> Iterator[list[int | None]]:
    """Generator.generate_ids for one prompt with drafts verified in batches: yields one [token]
    (or [None] at eos) per new token, as plain decoding does."""
    stats = stats if stats is not None else SpeculativeStats()
    cfg = g.model.config
    prompt = g._fit(prompt, cfg.max_seq_length, max_new_tokens)
    if max_new_tokens == 0:
        return
    total = len(prompt) + max_new_tokens
    cache = KVCache.for_model(cfg, 1, min(total, cfg.max_seq_length), dtype=g._cache_dtype(), device=g.device)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else random.randrange(2**63))
    pieces, eos = g.tokenizer.vocab_size, g.tokenizer.eos_id
    s = _Sampling(temperature, top_k, top_p, repetition_penalty, pieces)
    seen = torch.zeros(1, pieces, dtype=torch.bool)
    seen[0, prompt] = True
    lookup = PromptLookup(prompt, ngram) if speculative == "prompt_lookup" else None
    drafter = _DraftModel(g.draft, total, g.draft._cache_dtype()) if speculative == "draft" else None

    # The first token comes from the prefill, as in plain decoding.
    logits = g.model(torch.tensor([prompt], device=g.device), kv_cache=cache, last_logits_only=True)[:, -1]
    tok = int(sample_next(s.logits(logits, seen), temperature, top_k, top_p, gen)[0])
    seq = list(prompt)
    stats.rounds += 1
    while True:
        stats.tokens += 1
        if stop_at_eos and tok == eos:
            yield [None]
            return
        yield [tok]
        seq.append(tok)
        seen[0, tok] = True
        if lookup is not None:
            lookup.extend([tok])
        left = total - len(seq)  # new tokens still to come
        if left == 0:
            return
        # At most left - 1 drafts: a round yields the accepted drafts and one token more.
        k = min(num_draft_tokens, left - 1)
        q = None
        if lookup is not None:
            drafts = lookup.draft(k)
        elif k > 0 and drafter.room(len(seq)) > 0:
            drafts, q = drafter.propose(seq, min(k, drafter.room(len(seq))), s, seen, gen)
        else:
            drafts = []
        # The model: the last accepted token and the drafts, one step of S = 1 + len(drafts).
        cached = len(seq) - 1
        t = torch.tensor([[tok, *drafts]], device=g.device)
        n, nxt = verify(s, g.model(t, kv_cache=cache)[0], seen, drafts, q, gen)
        cache.truncate(cached + 1 + n)  # the last token and the accepted drafts stay
        stats.rounds += 1
        stats.proposed += len(drafts)
        stats.accepted += n
        for d in drafts[:n]:
            stats.tokens += 1
            if stop_at_eos and d == eos:
                yield [None]
                return
            yield [d]
            seq.append(d)
            seen[0, d] = True
        if lookup is not None:
            lookup.extend(drafts[:n])
        tok = nxt
