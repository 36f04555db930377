"""The sigmoid DPO loss (Rafailov et al., 2023) and the log-probabilities it compares.

    loss = -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

averaged over the pairs of a batch, with the log-probability of an answer summed over its tokens
(TRL's DPOTrainer, loss_type="sigmoid", computes the same). The implicit rewards beta * (log pi - log
ref) of each answer give the logged metrics: their means, their margin, and the share of pairs whose
chosen answer gets the higher reward (the reward accuracy).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.sft import IGNORE_INDEX


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N]: the sum over each row of log p(y[t] | x[:t+1]) where y is not IGNORE_INDEX."""
    logits = model(x).float()
    mask = y != IGNORE_INDEX
    per_token = torch.gather(F.log_softmax(logits, dim=-1), 2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (per_token * mask).sum(dim=1)


def dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> tuple:
    """(mean loss, per-pair stats) from [2B] log-probabilities ordered chosen then rejected."""
    chosen, rejected = policy_logps.chunk(2)
    ref_chosen, ref_rejected = ref_logps.to(policy_logps.dtype).chunk(2)
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    with torch.no_grad():
        stats = {"loss": losses.detach(), "reward_chosen": chosen_rewards.detach(),
                 "reward_rejected": rejected_rewards.detach(),
                 "reward_margin": (chosen_rewards - rejected_rewards).detach(),
                 "reward_accuracy": (chosen_rewards > rejected_rewards).float(),
                 "logp_chosen": chosen.detach(), "logp_rejected": rejected.detach()}
    return losses.mean(), stats


class PairStats:
    """Sums of the per-pair stats since the last `means()` (the report interval, or an evaluation)."""

    def __init__(self):
        self.sums, self.pairs = {}, 0

    def add(self, stats: dict) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.double().sum())
        self.pairs += len(next(iter(stats.values())))

    def means(self) -> dict:
        out = {k: v / max(self.pairs, 1) for k, v in self.sums.items()}
        self.sums, self.pairs = {}, 0
        return out
