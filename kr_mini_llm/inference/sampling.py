"""Next-token choice from logits: repetition / frequency / presence penalties, temperature, top-k, top-p.

Every setting check_sampling accepts gives a usable distribution, however extreme: a temperature
below GREEDY_BELOW is greedy (dividing by it would overflow float32), logits are scaled after
their maximum is subtracted (so the top token stays at 0, never inf - inf), top-p always keeps
the most likely token, and the repetition penalty is clamped to PENALTY_RANGE.
"""
from __future__ import annotations

import math

import torch

from .. import ops

# A temperature this small already puts all the mass on the top token (a logit gap of 1e-3
# becomes 100 nats); below it, logits / temperature can overflow float32.
GREEDY_BELOW = 1e-5
# A repetition penalty outside this range could push a logit past float32's range.
PENALTY_RANGE = (1e-6, 1e6)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float) -> None:
    """ValueError naming the setting that sampling cannot use (NaN and inf included)."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a whole number >= 1 (None keeps every token), got {top_k}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not isinstance(repetition_penalty, (int, float)) or not math.isfinite(repetition_penalty) \
            or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a finite number > 0, got {repetition_penalty}")


def is_greedy(temperature: float) -> bool:
    """Whether sample_next picks the top token for this temperature."""
    return temperature < GREEDY_BELOW


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: divide positive logits of already-seen tokens by `penalty`, multiply negative ones.

    logits [B, V]; seen [B, V] bool. The penalty is clamped to PENALTY_RANGE.
    """
    if penalty == 1.0:
        return logits
    penalty = min(max(penalty, PENALTY_RANGE[0]), PENALTY_RANGE[1])
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence_penalty(logits: torch.Tensor, counts: torch.Tensor, frequency: float,
                                     presence: float) -> torch.Tensor:
    """OpenAI-style: subtract frequency * count + presence * (count > 0) from each token's logit.

    logits [B, V]; counts [B, V], how often each token was generated so far.
    """
    if frequency == 0.0 and presence == 0.0:
        return logits
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Sets the logits outside the top-k and outside the top-p probability mass to -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False  # a top_p below float32's smallest value would drop it too
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token_probs(logits: torch.Tensor, temperature: float, top_k: int | None,
                     top_p: float | None) -> torch.Tensor:
    """logits [B, V] -> the distribution sample_next draws from [B, V] (float32), for a temperature
    of at least GREEDY_BELOW (greedy has no distribution to draw from: it is the argmax).

    ValueError when a row's logits are NaN or infinite at the top (the model, not the settings, failed).
    """
    logits = logits.float()
    top = logits.amax(-1, keepdim=True)
    if not torch.isfinite(top).all():
        raise ValueError("the model's logits are NaN or infinite; no token can be sampled from them")
    logits = filter_top_k_top_p((logits - top) / temperature, top_k, top_p)
    return torch.softmax(logits, dim=-1)


def greedy_pick(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., V] -> the greedy token ids [...]: torch.argmax(logits, -1)'s answer, from the
    vectorised kernel (ATen's argmax is about 1% of a small model's decode step on a CPU)."""
    return ops.argmax(logits)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. A temperature below GREEDY_BELOW (0 included) is greedy.

    ValueError when a row's logits are NaN or infinite at the top (the model, not the settings, failed).
    """
    if is_greedy(temperature):
        return greedy_pick(logits)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
