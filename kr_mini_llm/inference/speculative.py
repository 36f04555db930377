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

Many sequences verify together (Generator batches, the server's running rows: serve/engine.py):
each has its own drafter state (Drafter) and sampler, one padded forward verifies every row's
drafts (verify_step; a row with none makes a plain step), verify() decides each row, and
truncate_rows cuts each row's cache to what it accepted.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from ..model import KVCache
from .sampling import apply_repetition_penalty, greedy_pick, is_greedy, next_token_probs

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
    """One sequence's sampler, as generate_ids samples: the settings, and the ids it has seen (prompt
    and accepted tokens, for the repetition penalty). verify() reads it through `greedy`,
    `penalised` and `probs`; the server's rows (serve/engine.py) offer the same three."""

    def __init__(self, temperature, top_k, top_p, repetition_penalty, pieces, prompt: list[int]):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.penalty, self.pieces = repetition_penalty, pieces
        self.greedy = is_greedy(temperature)
        self.seen = torch.zeros(1, pieces, dtype=torch.bool)
        self.seen[0, prompt] = True

    def note(self, token: int) -> None:
        self.seen[0, token] = True

    def penalised(self, logits: torch.Tensor, drafted: list[int] = ()) -> torch.Tensor:
        """logits [1, V] -> the penalised logits of the decodable ids [1, pieces], with `drafted`
        counted as seen (the penalty is per token, so cutting the ids no piece has first changes nothing)."""
        logits = logits[:, :self.pieces].float().cpu()
        if self.penalty != 1.0:
            seen = self.seen
            if drafted:
                seen = seen.clone()
                seen[0, list(drafted)] = True
            logits = apply_repetition_penalty(logits, seen, self.penalty)
        return logits

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return next_token_probs(logits, self.temperature, self.top_k, self.top_p)


def verify(s, logits: torch.Tensor, drafts: list[int], q: torch.Tensor | None,
           gen: torch.Generator) -> tuple[int, int]:
    """(how many drafts are accepted, the token after them) from the model's logits [>= k+1, V] at the
    last accepted token and at each draft (rows past k+1, a padded batch's, are not read).
    s: the sequence's sampler (_Sampling, or a server row): `greedy`, `penalised(logits [1, V], drafted)`
    with the penalties of plain decoding, which at row i counts the first i drafts as generated, as
    plain decoding would have by then, and `probs(penalised logits)`.
    q [k, pieces]: the drafter's distributions (None: drafts chosen deterministically, q one-hot).
    With no drafts this is one plain step: the argmax, or a token drawn from p.
    Rows are processed one at a time, up to the first rejection (one-row ops stay single-threaded)."""
    k = len(drafts)
    for i in range(k + 1):
        row = s.penalised(logits[i:i + 1], drafts[:i])
        if s.greedy:
            best = int(greedy_pick(row))
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
    raise AssertionError("unreachable: row k always returns")


def verify_step(model, cache: KVCache, last: list[int], drafts: list[list[int]],
                device) -> tuple[torch.Tensor, list[list[int]]]:
    """One forward of every row's last token and its drafts, right-padded to the longest: logits
    [B, S, V] and the drafts verified (cut so that every row's cache has room for S more positions:
    each row grows by S, the padding included; truncate_rows then keeps what each accepted).
    Rows with no drafts make a plain step. Padding sits after a row's real tokens, so causal
    attention keeps it out of their logits."""
    room = cache.max_length - int(cache.lens.max()) - 1
    drafts = [d[:max(room, 0)] for d in drafts]
    width = 1 + max(len(d) for d in drafts)
    ids = torch.tensor([[t, *d] + [0] * (width - 1 - len(d)) for t, d in zip(last, drafts)], device=device)
    return model(ids, kv_cache=cache), drafts


def truncate_rows(cache: KVCache, lengths: list[int]) -> None:
    """Shortens row b of the cache to lengths[b] positions (each row keeps its own accepted run)."""
    cache.lens.clamp_(max=torch.tensor(lengths, device=cache.lens.device))


class _DraftModel:
    """The draft model's side for one sequence: its own cache, holding the accepted sequence but its
    last token."""

    def __init__(self, draft: "Generator", total: int):
        self.model, self.device = draft.model, draft.device
        self.cache = KVCache.for_model(draft.model.config, 1, min(total, draft.model.config.max_seq_length),
                                       dtype=draft._cache_dtype(), device=self.device)

    def room(self, seq_len: int) -> int:
        """How many drafts fit: the cache takes the sequence plus k - 1 drafts (the k-th is not fed)."""
        return self.cache.max_length - seq_len + 1

    def propose(self, seq: list[int], k: int, s, gen: torch.Generator) -> tuple[list[int], torch.Tensor | None]:
        self.cache.truncate(len(seq) - 1)  # drop drafts the model did not accept
        feed = seq[int(self.cache.lens[0]):]  # the accepted tokens it has not seen (1 or 2, or the prompt)
        drafts, qs = [], []
        for _ in range(k):
            t = torch.tensor([feed], device=self.device)
            logits = s.penalised(self.model(t, kv_cache=self.cache, last_logits_only=True)[:, -1], drafts)
            if s.greedy:
                d = int(greedy_pick(logits))
            else:
                qs.append(s.probs(logits)[0])
                d = int(torch.multinomial(qs[-1], 1, generator=gen))
            drafts.append(d)
            feed = [d]
        return drafts, (torch.stack(qs) if qs else None)


class Drafter:
    """One sequence's drafting state: prompt lookup over its tokens, or the draft model (a
    Generator) with a cache of its own for this sequence. `total`: the most tokens it will hold."""

    def __init__(self, mode: str, prompt: list[int], ngram: int, draft: "Generator | None", total: int):
        self.lookup = PromptLookup(prompt, ngram) if mode == "prompt_lookup" else None
        self.model = _DraftModel(draft, total) if mode == "draft" else None

    def extend(self, tokens: list[int]) -> None:
        """The tokens accepted since the last call."""
        if self.lookup is not None:
            self.lookup.extend(tokens)

    def propose(self, seq: list[int], k: int, s, gen: torch.Generator) -> tuple[list[int], torch.Tensor | None]:
        """Up to k drafts after `seq` (the whole sequence so far) and their distributions q [k, pieces]
        (None: chosen deterministically)."""
        if self.lookup is not None:
            return (self.lookup.draft(k) if k > 0 else []), None
        k = min(k, self.model.room(len(seq)))
        return self.model.propose(seq, k, s, gen) if k > 0 else ([], None)


class _Row:
    """A sequence of speculative_ids: its tokens, sampler and drafter, and the new tokens not yet yielded."""

    def __init__(self, prompt: list[int], s: _Sampling, drafter: Drafter):
        self.seq, self.s, self.drafter = list(prompt), s, drafter
        self.made = 0
        self.ended = False
        self.out: list[int | None] = []
        self.drafts: list[int] = []
        self.q: torch.Tensor | None = None

    def take(self, run: list[int], max_new_tokens: int, eos: int | None) -> None:
        """Records a run of new tokens, up to the first that ends the sequence."""
        for t in run:
            self.made += 1
            if t == eos:
                self.out.append(None)
                self.ended = True
                return
            self.out.append(t)
            self.seq.append(t)
            self.s.note(t)
            self.drafter.extend([t])
            if self.made == max_new_tokens:
                self.ended = True
                return


@torch.inference_mode()
def speculative_ids(g: "Generator", prompts: list[list[int]], max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, repetition_penalty: float, seed: int | None,
                    stop_at_eos: bool, speculative: str, num_draft_tokens: int, ngram: int,
                    stats: SpeculativeStats | None) -> Iterator[list[int | None]]:
    """Generator.generate_ids with drafts verified in batches: yields, per new token, one token per
    prompt (None at eos and after it), as plain decoding does. Every round runs the model once over
    all sequences still going, each with its own drafts; a sequence that accepted more than another
    waits in `out` until the others have made as many tokens."""
    stats = stats if stats is not None else SpeculativeStats()
    cfg = g.model.config
    ctx = cfg.max_seq_length
    prompts = [g._fit(p, ctx, max_new_tokens) for p in prompts]
    if max_new_tokens == 0:
        return
    total = max(len(p) for p in prompts) + max_new_tokens
    # Room for a round's padding past a finished sequence, so that it never cuts the others' drafts.
    cache = KVCache.for_model(cfg, len(prompts), min(total + num_draft_tokens, ctx), dtype=g._cache_dtype(),
                              device=g.device)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else random.randrange(2**63))
    pieces = g.tokenizer.vocab_size
    eos = g.tokenizer.eos_id if stop_at_eos else None
    rows = [_Row(p, _Sampling(temperature, top_k, top_p, repetition_penalty, pieces, p),
                 Drafter(speculative, p, ngram, g.draft, total)) for p in prompts]

    # The first token comes from each prompt's own prefill, as in plain decoding.
    for b, (row, p) in enumerate(zip(rows, prompts)):
        logits = g.model(torch.tensor([p], device=g.device), kv_cache=cache.row(b), last_logits_only=True)[0]
        row.take([verify(row.s, logits, [], None, gen)[1]], max_new_tokens, eos)
        stats.rounds += 1
        stats.tokens += 1
    while True:
        while all(row.out or row.ended for row in rows):
            if all(row.ended and not row.out for row in rows):
                return
            yield [row.out.pop(0) if row.out else None for row in rows]
        going = [row for row in rows if not row.ended]
        for row in going:
            # At most left - 1 drafts: a round yields the accepted drafts and one token more.
            k = min(num_draft_tokens, max_new_tokens - row.made - 1)
            row.drafts, row.q = row.drafter.propose(row.seq, k, row.s, gen)
        # Finished sequences step along on padding and are cut back to their length.
        lens = cache.lens.tolist()
        logits, drafts = verify_step(g.model, cache, [row.seq[-1] for row in rows],
                                     [row.drafts if not row.ended else [] for row in rows], g.device)
        keep = list(lens)
        for b, row in enumerate(rows):
            if row.ended:
                continue
            q = None if row.q is None else row.q[:len(drafts[b])]
            n, nxt = verify(row.s, logits[b], drafts[b], q, gen)
            keep[b] = lens[b] + 1 + n  # the last token and the accepted drafts
            stats.rounds += 1
            stats.proposed += len(drafts[b])
            stats.accepted += n
            before = row.made
            row.take(drafts[b][:n] + [nxt], max_new_tokens, eos)
            stats.tokens += row.made - before
        truncate_rows(cache, keep)
