"""Training memory of a model config, before building it: `TransformerConfig.estimate_memory`.

    est = TransformerConfig.from_yaml("configs/model_small.yaml").estimate_memory(
        batch_size=8, seq_len=1024, precision="bf16", optimizer="adamw", gradient_checkpointing=False)
    print(est)            # a table: parameters, gradients, optimizer state, activations, peak
    est.total_bytes

What one optimizer step of kr_mini_llm's Transformer holds at its peak, counted from the
tensors autograd saves on the fused path (csrc/ops, ops/*.py `save_for_backward`):
  - parameters: fp32 master weights (num_parameters x 4 bytes); under bf16/fp16 autocast the
    matrices' low-precision copies live through the step too (autocast caches them);
  - gradients: fp32, one per parameter;
  - optimizer state: AdamW keeps two fp32 moments per parameter, SGD with momentum one;
  - activations, per layer and token: the residual stream saved by both RMSNorms, the normed
    inputs the projections save, rotated q/k, v, the attention output and its logsumexp, the
    SwiGLU gate/up and its output; under autocast the projections of one input share one cast
    copy of it (model/layers.py `autocast_input`); with gradient checkpointing only each block's input, plus one block recomputed
    during backward;
  - the LM-head loss, fused and chunked: its forward already computes grad_hidden [N, C] and
    grad_weight [V, C], which backward scales into new tensors, and a [chunk, V] logits buffer.
The peak is at the top of backward (activations still alive, the LM head's gradients made)
or at the optimizer step (all gradients), whichever is larger; tests/training/test_memory_estimate.py
checks it against the allocator's measured peak of a real step within 15%. Not counted: the
framework itself (the Python process, torch's libraries and thread pools, some 300-500 MB of
resident memory on the CPU, the CUDA context on a GPU) and the data loader.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemoryEstimate", "estimate_memory", "PRECISIONS", "OPTIMIZERS"]

PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2}
# optimizer -> fp32 state values per parameter
OPTIMIZERS = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    loss_head: int
    total_bytes: int
    batch_size: int
    seq_len: int
    precision: str
    optimizer_name: str
    gradient_checkpointing: bool

    def rows(self):
        return [("parameters", self.parameters), ("gradients", self.gradients),
                ("optimizer state", self.optimizer), ("activations", self.activations),
                ("LM-head loss buffers", self.loss_head), ("peak of a step", self.total_bytes)]

    def __str__(self) -> str:
        head = (f"training memory estimate: batch {self.batch_size} x {self.seq_len} tokens, {self.precision}, "
                f"{self.optimizer_name}, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")
        lines = [head] + [f"  {name:<22s}{_gib(v):>12s}" for name, v in self.rows()]
        lines.append("  (the peak is not the sum: gradients replace activations during backward; "
                     "the framework itself is not counted)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {name.replace(" ", "_").replace("-", "_").lower(): v for name, v in self.rows()}


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def estimate_memory(config, batch_size: int, seq_len: int, precision: str = "fp32", optimizer: str = "adamw",
                    gradient_checkpointing: bool = False) -> MemoryEstimate:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be >= 1")
    if seq_len > config.max_seq_length:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_length {config.max_seq_length}")
    from ..ops.linear_cross_entropy import default_chunk_size

    a = PRECISIONS[precision]
    amp = precision != "fp32"
    C, I, L, V = config.hidden_size, config.intermediate_size, config.num_layers, config.vocab_size
    H, Hkv, D = config.num_heads, config.num_kv_heads, config.resolved_head_dim
    N = batch_size * seq_len
    P = config.num_parameters
    matrices = P - (2 * L + 1) * C - (L * 2 * D if config.qk_norm else 0)  # all but the norm weights

    params = 4 * P + (a * matrices if amp else 0)
    grads = 4 * P
    opt = 4 * OPTIMIZERS[optimizer] * P

    # Saved per token by one block (bytes).
    q, kv = H * D, Hkv * D
    block = 4 * C + 4 * C                      # residual saved by input and post-attention norms (fp32)
    block += a * C                             # normed input of q/k/v (autocast: one cast copy, shared)
    block += a * C                             # normed input of gate/up (likewise)
    block += a * (q + 2 * kv) + a * q + 4 * H  # rotated q, k, v; attention output (o_proj's input), logsumexp
    block += a * (q + kv) if config.qk_norm else 0
    block += 3 * a * I                         # gate, up, swiglu output
    # dropout saves nothing: its backward hashes the mask again from the seed (ops/dropout.py)
    final = N * (4 * C + 8)                    # final norm input, targets
    # LM head: grad_hidden and grad_weight from the forward, their scaled copies in backward,
    # the [chunk, V] fp32 logits; autocast's cast copy of the normed hidden.
    head = 2 * (N * a * C + 4 * V * C) + 4 * default_chunk_size(N, V) * V + (a * N * C if amp else 0)
    if gradient_checkpointing:
        saved = N * L * 4 * C                  # each block's input
        acts = saved + N * block + final
        # top of backward: the saved inputs and the head; then each block is recomputed in turn
        # while the LM head's gradient, the gradient flowing back (2 x [N, C] fp32) and the
        # block's own activation gradients (gate and up: 2 x [N, I]) are alive.
        during = max(saved + final + head, saved + N * block + 4 * V * C + 8 * N * C + 2 * a * N * I)
    else:
        acts = N * L * block + final
        during = acts + head
    total = params + opt + max(during, grads)
    return MemoryEstimate(params, grads, opt, acts, head, total, batch_size, seq_len, precision, optimizer,
                          gradient_checkpointing)
