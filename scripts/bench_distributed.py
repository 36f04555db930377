#!/usr/bin/env python3
"""Training throughput and memory per rank: one process against torchrun with DDP and FSDP2.

    python scripts/bench_distributed.py                       # model_tiny + model_small, CPU -> benchmarks/distributed_cpu.md
    python scripts/bench_distributed.py --models tiny --steps 3 --seq_len 64 --batch 4 --output /tmp/b.md   # quick check

On the CPU: 1 process x 2 threads against 2 processes x 1 thread (gloo), the same global batch
(--batch sequences of --seq_len per step, split over the ranks), the trainer's step (fused ops,
AdamW, clipping) on random tokens. Per rank: peak RSS, and the bytes of parameters + gradients
+ AdamW state that rank holds (what FSDP2 divides by the world size). With --device cuda: NCCL
and one process per GPU, or a one-process FSDP2 run when only one GPU is present.
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def worker(args) -> None:
    import torch

    from kr_mini_llm import TransformerConfig
    from kr_mini_llm.model import Transformer
    from kr_mini_llm.training import TrainingConfig
    from kr_mini_llm.training.distributed import DistributedContext
    from kr_mini_llm.training.optim import build_optimizer

    torch.set_num_threads(args.threads)
    config = TrainingConfig.from_dict({"device": args.device, "train": {"distributed": args.mode}})
    ctx = DistributedContext(config, torch.device(args.device))
    model_config = TransformerConfig.from_yaml(ROOT / "configs" / f"model_{args.model}.yaml")
    torch.manual_seed(0)
    model = Transformer(model_config).to(ctx.device)
    forward = ctx.wrap_model(model, config.train)
    optimizer = build_optimizer(model, config.train, ctx.device)
    micro = args.batch // ctx.world_size
    gen = torch.Generator().manual_seed(ctx.rank)

    def step():
        x = torch.randint(0, model_config.vocab_size, (micro, args.seq_len + 1), generator=gen).to(ctx.device)
        loss = forward(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated: they count in the state below
        return loss

    for _ in range(args.warmup):
        step()
    ctx.barrier()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    ctx.barrier()
    seconds = (time.perf_counter() - start) / args.steps

    def local_bytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    state = sum(local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0) for p in model.parameters())
    state += sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    row = {"rank": ctx.rank, "world_size": ctx.world_size, "seconds_per_step": seconds,
           "tokens_per_s": args.batch * args.seq_len / seconds,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "model_state_mb": state / 2 ** 20,
           "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if ctx.device.type == "cuda" else None,
           "parameters": model_config.num_parameters}
    Path(args.result).with_suffix(f".{ctx.rank}.json").write_text(json.dumps(row))
    ctx.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model, mode, procs, threads, args, tmp) -> list:
    result = Path(tmp) / f"{model}-{mode}-{procs}"
    common = ["--worker", "--model", model, "--mode", mode, "--threads", str(threads), "--device", args.device,
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--seq_len", str(args.seq_len),
              "--batch", str(args.batch), "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [sys.executable, __file__, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", __file__, *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(result.with_suffix(f".{r}.json").read_text()) for r in range(procs)]


def main(argv=None) -> int:
    from bench_common import add_isa_argument, enter_isa, environment

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small", help="configs/model_NAME.yaml, comma-separated")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=10, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences per step), split over the ranks")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "distributed_cpu.md"))
    add_isa_argument(p)
    # worker side (started by this script)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    enter_isa(args.isa)  # the workers inherit its limits and kernel build
    import torch

    if args.batch % 2:
        raise SystemExit("--batch must be even (it is split over 2 ranks)")
    if args.device == "cuda":
        gpus = torch.cuda.device_count()
        plans = ([("none", 1, 1), ("ddp", gpus, 1), ("fsdp", gpus, 1)] if gpus > 1
                 else [("none", 1, 1), ("fsdp", 1, 1)])
    else:
        plans = [("none", 1, 2), ("ddp", 2, 1), ("fsdp", 2, 1)]
    command = "python scripts/bench_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Distributed training throughput ({args.device})", "",
             f"Command: `{command.strip()}`", "",
             *environment(), f"- Device: {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), "",
             f"Global batch {args.batch} x {args.seq_len} tokens per step, float32, fused ops, AdamW, clipping; "
             f"{args.warmup} warm-up + {args.steps} timed steps on random tokens. Model state = parameters + "
             "gradients + AdamW moments held by one rank; peak RSS includes the ~0.3-0.5 GB of torch itself.", "",
             "| model | params | run | tokens/s | vs 1 process | peak RSS / rank (MB) | model state / rank (MB) |"
             + (" peak CUDA / rank (MB) |" if args.device == "cuda" else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if args.device == "cuda" else "")]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            base = None
            for mode, procs, threads in plans:
                rows = run(model, mode, procs, threads, args, tmp)
                tps = rows[0]["tokens_per_s"]
                base = base or tps
                label = (f"1 process x {threads} threads" if procs == 1 and mode == "none"
                         else f"{mode} {procs} x {threads} thread")
                rss = max(r["peak_rss_mb"] for r in rows)
                state = max(r["model_state_mb"] for r in rows)
                cuda = (f" {max(r['peak_cuda_mb'] for r in rows):.0f} |" if args.device == "cuda" else "")
                lines.append(f"| {model} | {rows[0]['parameters'] / 1e6:.1f}M | {label} | {tps:,.0f} | "
                             f"{tps / base:.2f}x | {rss:.0f} | {state:.1f} |{cuda}")
                print(lines[-1], flush=True)
    lines += ["", "FSDP2 divides the model state per rank by the world size (compare its column with DDP's); "
              "on a CPU the extra all-gathers and reduce-scatters cost time, which is the trade."]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
