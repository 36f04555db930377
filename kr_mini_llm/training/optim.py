"""The pretraining optimizer and its learning-rate schedule.

train.optimizer: adamw (every weight; decoupled weight decay on matrices only) or muon
(torch.optim.Muon on the 2-D hidden matrices, AdamW on the embedding, head and norms, each with
its own learning rate) -- one optimizer object either way, so checkpoints, DCP and the loop see
one state dict.

The schedule is keyed to progress = the larger of step / max_steps and elapsed / max_time_minutes:
whichever budget ends the run, the rate reaches min_learning_rate as it ends. train.max_epochs
lowers max_steps to the steps of that many passes (run_max_steps), so a pass budget anneals too.
Warmup is keyed the same way: it is the first warmup_steps / max_steps of the run, of its steps or
of its time.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

# Parameters that stay on AdamW under train.optimizer: muon (besides every non-2-D one): the
# token embedding and the output head are lookups/readouts, not hidden maps (as in the Muon paper).
_NOT_HIDDEN = ("embed_tokens", "lm_head")


def build_optimizer(model: torch.nn.Module, train, device: torch.device) -> torch.optim.Optimizer:
    if getattr(train, "optimizer", "adamw") == "muon":
        return MuonAdamW(model, train, device)
    return _adamw(_adamw_groups(model.named_parameters(), train), train, device)


def _adamw_groups(named, train) -> list[dict]:
    decay, no_decay = [], []
    for _, p in named:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups, train, device) -> torch.optim.AdamW:
    # The fused kernel exists for CUDA and CPU (and MPS in recent torch); fall back quietly.
    fused = device.type in ("cuda", "cpu", "mps")
    try:
        return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2), fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2))


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for the hidden matrices and torch.optim.AdamW for the rest, as one
    optimizer: its param_groups are the two optimizers' groups (Muon's first, each tagged with
    "optimizer") and its state is theirs, so the ordinary state_dict / load_state_dict, DCP's
    helpers and the loop's `for group in param_groups` all work unchanged."""

    def __init__(self, model: torch.nn.Module, train, device: torch.device):
        # torch.optim.Muon orthogonalises in bf16; on a CPU without native bf16 matmuls that is
        # emulated and took 17 s a step for model_tiny (AVX2 EPYC), so there it runs in fp32 (+~15%).
        self.fp32_orthogonalization = device.type == "cpu" and not _native_bf16(device)
        hidden, rest = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            is_hidden = p.dim() == 2 and not any(part in _NOT_HIDDEN for part in name.split("."))
            (hidden if is_hidden else rest).append((name, p))
        self._muon = torch.optim.Muon([p for _, p in hidden], lr=train.muon_learning_rate,
                                      weight_decay=train.weight_decay, momentum=train.muon_momentum,
                                      ns_steps=train.muon_ns_steps)
        self._adamw = _adamw(_adamw_groups(rest, train), train, device)
        for group in self._muon.param_groups:
            group["optimizer"] = "muon"
        for group in self._adamw.param_groups:
            group["optimizer"] = "adamw"
        super().__init__(self._muon.param_groups + self._adamw.param_groups, defaults={})
        self._link()

    def _link(self) -> None:
        """Points the two optimizers at this object's groups and (shared, parameter-keyed) state;
        load_state_dict replaces both, so it calls this again."""
        self._muon.param_groups = [g for g in self.param_groups if g["optimizer"] == "muon"]
        self._adamw.param_groups = [g for g in self.param_groups if g["optimizer"] == "adamw"]
        self._muon.state = self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        kinds = [g.get("optimizer") for g in state_dict.get("param_groups", [])]
        ours = [g["optimizer"] for g in self.param_groups]
        if kinds != ours:
            raise ValueError(f"the saved optimizer has groups {kinds}, this one {ours} (saved with another "
                             "train.optimizer?)")
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.fp32_orthogonalization:
            self._muon_step_fp32()
        else:
            self._muon.step()
        self._adamw.step()
        return loss

    def _muon_step_fp32(self) -> None:
        """torch.optim.Muon's update (same state, same hyperparameters) with the Newton-Schulz
        iteration in fp32."""
        for group in self._muon.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                ortho = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                rows, cols = p.shape[:2]
                scale = 0.2 * math.sqrt(max(rows, cols)) if group["adjust_lr_fn"] == "match_rms_adamw" \
                    else math.sqrt(max(1, rows / cols))
                p.mul_(1 - lr * decay)
                p.add_(ortho, alpha=-lr * scale)


def orthogonalize(g: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """About U V^T of g = U S V^T: the quintic Newton-Schulz iteration X <- aX + (bA + cA^2)X with
    A = X X^T, started from g over its norm, on the wide orientation (fewer rows), in fp32."""
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.float().T if tall else g.float()
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


def _native_bf16(device: torch.device) -> bool:
    from ..device import precision_choice

    dtype, _ = precision_choice(device, True, "auto")
    return dtype == torch.bfloat16


def schedule_progress(step: int, elapsed_s: float, train) -> float:
    """How far the run is, in [0, 1]: the step fraction or, when train.max_time_minutes is set, the
    time fraction, whichever is further -- the budget that will end the run."""
    progress = step / train.max_steps
    if train.max_time_minutes:
        progress = max(progress, elapsed_s / (60.0 * train.max_time_minutes))
    return min(1.0, progress)


def warmup_factor(step: int, elapsed_s: float, train) -> float | None:
    """The rate during warmup as a fraction of the peak, or None once warmup is over.

    Warmup takes the first warmup_steps / max_steps of the run: of its steps, or, when
    train.max_time_minutes is set, of its time, whichever share is reached first. A CPU too slow to
    reach warmup_steps within the time limit would otherwise never leave warmup, let alone decay.
    It depends on the step and the elapsed time only, and the trainer state saves both (elapsed_s),
    so a resumed run goes on with the same rates. Without a time limit it is the usual
    (step + 1) / warmup_steps."""
    if step >= train.warmup_steps:
        return None
    by_steps = (step + 1) / train.warmup_steps
    if not train.max_time_minutes:
        return by_steps
    share = train.warmup_steps / train.max_steps
    by_time = elapsed_s / (60.0 * train.max_time_minutes) / share
    return None if by_time >= 1.0 else max(by_steps, by_time)


def lr_factor(step: int, train, elapsed_s: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based), as a fraction of the peak: linear
    warmup (warmup_factor), then by schedule_progress: cosine or linear decay to
    min_learning_rate, constant, or wsd (constant, then linear decay over the last decay_fraction)."""
    warming = warmup_factor(step, elapsed_s, train)
    if warming is not None:
        return warming
    if train.lr_schedule == "constant":
        return 1.0
    floor = train.min_learning_rate / train.learning_rate
    # Decay progress after warmup: (step - warmup) / (max_steps - warmup) when steps end the run;
    # warmup ends at this same share of the time when time leads, so decay starts from 0 either way.
    start = min(train.warmup_steps / train.max_steps, 1.0)
    progress = (schedule_progress(step, elapsed_s, train) - start) / max(1.0 - start, 1e-12)
    progress = min(1.0, max(0.0, progress))
    if train.lr_schedule == "linear":
        shape = 1 - progress
    elif train.lr_schedule == "wsd":
        stable = 1.0 - train.decay_fraction
        shape = 1.0 if progress <= stable else (1.0 - progress) / train.decay_fraction
    else:
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * shape


def run_max_steps(train, train_tokens: int | None, step_tokens: int) -> int:
    """The run's step budget: train.max_steps, or fewer where train.max_epochs passes over
    `train_tokens` take fewer steps of `step_tokens` (the last pass may end partway through a step's
    batch: rounded up). The schedule is keyed to it (lr_factor with max_steps replaced), so a run
    that the pass budget ends is annealed as it ends. Many passes over a small corpus overfit; on a
    fast machine the pass budget ends the run where more steps would only make the model worse."""
    if train.max_epochs is None:
        return train.max_steps
    if not train_tokens:
        raise ConfigError("train.max_epochs counts passes over the training tokens, which this run does not know "
                          "(pretraining runs do); leave it out and use train.max_steps")
    return max(1, min(train.max_steps, math.ceil(train.max_epochs * train_tokens / step_tokens - 1e-9)))


def dropout_at(train, model_dropout: float, epochs_seen: float) -> float:
    """The dropout rate for the next step: train.dropout (the model config's `model_dropout` when
    unset) once the run has seen train.dropout_after_epochs passes over its training tokens, 0
    before. Many passes over a small corpus overfit, which dropout holds back, while in the first
    passes it only slows learning."""
    rate = model_dropout if train.dropout is None else train.dropout
    return rate if epochs_seen >= train.dropout_after_epochs else 0.0


def learning_rate(step: int, train, elapsed_s: float = 0.0) -> float:
    """The (AdamW) learning rate for optimizer step `step` (0-based)."""
    return train.learning_rate * lr_factor(step, train, elapsed_s)


def set_learning_rates(optimizer: torch.optim.Optimizer, train, factor: float) -> None:
    """Each group's rate at this point of the schedule: Muon's groups from muon_learning_rate,
    the rest from learning_rate."""
    for group in optimizer.param_groups:
        peak = train.muon_learning_rate if group.get("optimizer") == "muon" else train.learning_rate
        group["lr"] = peak * factor
