"""Everything that knows about ranks. The rest of the trainer calls these and stays rank-agnostic.

One process (no torchrun): rank 0 of 1, every method a no-op. Under torchrun
(`torchrun --nproc_per_node=N scripts/train.py ...`) the process group is set up from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), with NCCL on CUDA and gloo on the
CPU and on MPS, and the model is wrapped for `train.distributed`:

  ddp   DistributedDataParallel (the default when WORLD_SIZE > 1); checkpoints as one process writes them.
  fsdp  FSDP2: `fully_shard` on every block and on the root, optional CPU offload (CUDA only) and
        mixed-precision policy (bf16/fp16 compute, fp32 gradient reduction); sharded DCP checkpoints
        (see run_checkpoint.py and checkpoint/sharded.py).

Failures: `agree()` lets a rank-local step (reading data, loading a checkpoint) end every rank with
the failing rank's message instead of leaving the others waiting in a collective; the collective
timeout (train.collective_timeout_minutes) bounds the wait for a rank that hangs.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch

from ..model.config import ConfigError
from .run_checkpoint import save_checkpoint, save_sharded_checkpoint


class RankFailedError(RuntimeError):
    """Another rank failed; the message names it and says what went wrong there."""


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def env_rank() -> int:
    return int(os.environ.get("RANK", 0))


def distributed_mode(requested: str, world_size: int) -> str:
    """train.distributed resolved for this launch: "auto" is DDP under torchrun, none in one process."""
    return ("ddp" if world_size > 1 else "none") if requested == "auto" else requested


class DistributedContext:
    """`DistributedContext(config, device)`: joins (or, for a one-process FSDP/DDP run, makes) the
    process group and says which device this rank trains on (`.device`)."""

    def __init__(self, config=None, device: torch.device | None = None):
        import torch.distributed as dist

        self.rank = env_rank()
        self.world_size = env_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        t = config.train if config is not None else None
        requested = t.distributed if t is not None else "auto"
        if requested == "none" and self.world_size > 1:
            raise ConfigError(f"train.distributed is 'none' but WORLD_SIZE={self.world_size} (torchrun started "
                              f"{self.world_size} processes): each would train its own copy on the same data. "
                              "Set train.distributed to ddp or fsdp, or run one process")
        self.mode = distributed_mode(requested, self.world_size)
        self.device = self._place(device if device is not None else torch.device("cpu"))
        self.enabled = self.mode != "none"
        self._created_group = False
        self._ddp = None
        self._fsdp_root = None
        self.cpu_offload = bool(t.fsdp_cpu_offload) if t is not None else False
        if self.cpu_offload and self.mode != "fsdp":
            raise ConfigError("train.fsdp_cpu_offload needs train.distributed: fsdp")
        if self.cpu_offload and self.device.type != "cuda":
            raise ConfigError(f"train.fsdp_cpu_offload offloads GPU parameters to CPU memory; on {self.device.type} "
                              "there is nothing to offload (FSDP's offload also needs CUDA's pinned memory). "
                              "Set it to false")
        if not self.enabled:
            return
        if self.device.type == "mps" and self.local_world_size > 1:
            raise ConfigError(f"{self.local_world_size} processes on one Mac: MPS has one GPU per machine, so run "
                              "one process per Mac (torchrun --nproc_per_node=1 --nnodes=M ...)")
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            minutes = t.collective_timeout_minutes if t is not None else 10.0
            kwargs = {"backend": self.backend, "timeout": datetime.timedelta(minutes=minutes)}
            if self.device.type == "cuda":
                kwargs["device_id"] = self.device
            if self.world_size == 1 and "MASTER_ADDR" not in os.environ:
                # One process asked for ddp/fsdp without torchrun (e.g. one-GPU FSDP with CPU offload).
                kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
            elif "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
                raise ConfigError(f"WORLD_SIZE={self.world_size} but MASTER_ADDR/MASTER_PORT are not set; start "
                                  "the processes with torchrun (torchrun --nproc_per_node=N scripts/train.py ...)")
            dist.init_process_group(**kwargs)
            self._created_group = True
        self.backend = dist.get_backend()

    def _place(self, device: torch.device) -> torch.device:
        """Each process of a CUDA run takes cuda:LOCAL_RANK."""
        if device.type != "cuda" or self.world_size == 1:
            return device
        if device.index is not None:
            raise ConfigError(f"device: {device} would put all {self.world_size} processes on one GPU; use "
                              "device: cuda (each process takes cuda:LOCAL_RANK)")
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={self.local_rank} but this machine has {torch.cuda.device_count()} "
                              "GPU(s); lower --nproc_per_node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    # -- who am I ------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """True when the model's parameters are split over ranks (FSDP): every rank must take part
        in each forward, and checkpoints are sharded."""
        return self.mode == "fsdp"

    @property
    def tag(self) -> str:
        """'[rank 1/2] ' in a multi-process run, '' otherwise: the prefix of every error message."""
        return f"[rank {self.rank}/{self.world_size}] " if self.world_size > 1 else ""

    def describe(self) -> str:
        if not self.enabled:
            return "none (one process)"
        return f"{self.mode}, {self.world_size} process(es), backend {self.backend}"

    # -- reductions ----------------------------------------------------------------------------
    def mean(self, value: float) -> float:
        """Mean of a scalar over ranks."""
        return self.sum(value)[0] / self.world_size if self.enabled else value

    def sum(self, *values: float) -> tuple:
        """Sums of scalars over ranks (float64, one collective for all of them)."""
        if not self.enabled:
            return tuple(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return tuple(t.tolist())

    def from_main(self, value):
        """Rank 0's `value` (any picklable object) on every rank: for a decision that must be the
        same everywhere but rests on a measurement each rank would take differently."""
        if not self.enabled or self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank."""
        return self.sum(float(flag))[0] > 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @contextlib.contextmanager
    def agree(self, what: str):
        """Runs a rank-local block, then every rank learns whether any rank failed in it: the failing
        rank re-raises its own error, the others raise RankFailedError naming it. The block must not
        run collectives that a failing rank could skip (DCP's own collectives report failures)."""
        if not self.enabled or self.world_size == 1:
            yield
            return
        import torch.distributed as dist

        error = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- re-raised below, after the others have heard of it
            error = e
        messages = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
            raise RankFailedError(f"rank {rank}{more} failed while {what}: {message}")

    # -- the model -----------------------------------------------------------------------------
    def wrap_model(self, model: torch.nn.Module, train=None, amp_dtype: torch.dtype | None = None):
        """Returns the module to call for training steps. DDP wraps `model` (which stays the plain
        module for eval, sampling and saving); FSDP2 shards `model` in place and returns it."""
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # The only buffers are the RoPE tables, equal on every rank: no broadcast before each forward
            # (torch >= 2.13 names the switch forward_sync_buffers and deprecates broadcast_buffers).
            import inspect

            newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
            self._ddp = DistributedDataParallel(model, device_ids=ids, **no_sync)
            return self._ddp
        if self.mode == "fsdp":
            self._fsdp_root = shard_model(model, self.device, self.world_size, amp_dtype=amp_dtype,
                                          cpu_offload=self.cpu_offload,
                                          reshard_after_forward=train.fsdp_reshard_after_forward if train else True)
            return self._fsdp_root
        return model

    def grad_sync(self, enabled: bool):
        """Context for one micro-step's backward: gradients are reduced across ranks only when
        `enabled` (the last micro-step of an accumulation), so accumulation costs no extra traffic."""
        if self._ddp is not None and not enabled:
            return self._ddp.no_sync()
        if self._fsdp_root is not None:
            self._fsdp_root.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    @property
    def samples_here(self) -> bool:
        """Whether this rank runs the sampling at eval: rank 0, or every rank in lockstep when the
        parameters are sharded (each forward gathers them from all ranks)."""
        return self.is_main or self.sharded

    def eval_share(self, batches):
        """This rank's share of the eval batches (batch i goes to rank i % world_size), as
        (x, y, counted). With sharded parameters every rank must run the same number of forwards,
        so a rank with one batch fewer repeats a batch with counted=False."""
        if not self.enabled:
            for x, y in batches:
                yield x, y, True
            return
        total, mine, last = 0, 0, None
        for i, (x, y) in enumerate(batches):
            total += 1
            if last is None:
                last = (x, y)
            if i % self.world_size == self.rank:
                mine += 1
                last = (x, y)
                yield x, y, True
        if self.sharded and last is not None:
            for _ in range(-(-total // self.world_size) - mine):
                yield last[0], last[1], False

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, output_dir, step, model, optimizer, trainer_state, train_config, model_config,
                        tokenizer_path=None, keep=None):
        """The ordinary checkpoint, written by rank 0 (DDP replicas are identical), or a sharded DCP
        checkpoint written by every rank (FSDP): the one place that picks between the two writers of
        run_checkpoint.py. Returns the path on rank 0, None elsewhere."""
        state = {**trainer_state, "world_size": self.world_size, "distributed": self.mode}
        if self.sharded:
            return save_sharded_checkpoint(output_dir, step, model, optimizer, state, train_config, model_config,
                                           tokenizer_path, keep, is_main=self.is_main, barrier=self.barrier)
        path = None
        with self.agree(f"saving checkpoint-{step}"):
            if self.is_main:
                path = save_checkpoint(output_dir, step, model, optimizer, state, train_config, model_config,
                                       tokenizer_path, keep=keep)
        return path

    def close(self) -> None:
        """Leaves the process group this context made (torchrun's workers then exit cleanly).

        The DDP wrapper goes first, while the group is still registered: its C++ reducer holds the
        group, and if the reducer drops the last reference, gloo's destructor joins its worker
        threads with the GIL held, which deadlocks when a worker is still finishing a timed-out
        collective and needs the GIL (pytorch#56297). The caller drops its own references to the
        wrapper before this (Trainer.close)."""
        import gc

        self._ddp = self._fsdp_root = None
        gc.collect()  # a wrapper kept alive by a reference cycle dies now, not after the group
        if self._created_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._created_group = False


def check_global_batch(saved_state: dict, global_batch: int, world_size: int) -> None:
    """Resuming continues the data stream exactly when each optimizer step takes as many windows
    as before (the stream counts windows over all ranks), whatever the world size."""
    saved = saved_state.get("global_batch")
    if saved is None or saved == global_batch:
        return
    raise ConfigError(
        f"the checkpoint was trained with a global batch of {saved} sequences per step (batch_size x "
        f"gradient_accumulation_steps x world_size), this run has {global_batch} with {world_size} process(es); "
        f"keep the global batch to continue the same run, e.g. choose train.batch_size x "
        f"train.gradient_accumulation_steps = {saved // world_size if saved % world_size == 0 else '?'} "
        f"for {world_size} process(es)")


def shard_model(model: torch.nn.Module, device: torch.device, world_size: int, amp_dtype=None,
                cpu_offload: bool = False, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2: one `fully_shard` unit per decoder block, then the root (embeddings, final norm and
    LM head, which may share the embedding's weight). Parameters become DTensors between steps;
    inside a unit's forward they are plain gathered tensors, which is what the fused ops take."""
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    except ImportError as e:  # public FSDP2 API since torch 2.6
        raise ConfigError(f"train.distributed: fsdp needs torch >= 2.6 (FSDP2), this is {torch.__version__}; "
                          "upgrade torch or use train.distributed: ddp") from e

    mesh = init_device_mesh(device.type, (world_size,))
    mp = (MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) if amp_dtype is not None
          else MixedPrecisionPolicy())
    kwargs = {"mesh": mesh, "mp_policy": mp, "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    for block in model.layers:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kwargs)
    return model


def explain_collective_failure(error: BaseException) -> str | None:
    """A readable message for a collective that failed because another rank stopped answering
    (timed out, or its connection closed when it died), or None for any other error."""
    import torch.distributed as dist

    text = str(error)
    timed_out = "timed out" in text.lower() or "timeout" in text.lower()
    lost_peer = "connection closed by peer" in text.lower() or "connection reset" in text.lower()
    if not (dist.is_available() and dist.is_initialized()) or not (timed_out or lost_peer):
        return None
    what = ("waited longer than train.collective_timeout_minutes for the other ranks" if timed_out
            else "lost the connection to another rank")
    return (f"a collective operation {what}: another rank hung or died (its own log, or torchrun's "
            f"summary, names it and says why). Original error: {text.strip()}")


def close_distributed() -> None:
    """Destroys the default process group if one is up (for scripts that end a run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
