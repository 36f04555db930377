"""Pretrain a kr-mini-llm model.

    python scripts/train.py --config configs/training.yaml --model_config configs/model_small.yaml \\
        [--output_dir DIR] [--resume_from DIR] [--set train.max_steps=100 ...]
    python scripts/train.py --resume_from checkpoints/checkpoint-5000/   # configs come from the checkpoint
    torchrun --nproc_per_node=N scripts/train.py ...   # N processes: DDP, or FSDP2 with --set train.distributed=fsdp
    python scripts/train.py --config ... --model_config ... --estimate_memory   # memory of a step, then exit
    python scripts/train.py --config ... --model_config configs/model_tiny.yaml --overfit_batch   # sanity run
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from .. import ConfigError, TransformerConfig
from ..errors import EXIT_USER_ERROR, format_error
from ..inference import Generator
from ..training import Trainer, TrainingConfig, TrainingStopped, resolve_checkpoint
from ..device import pick_device
from ..io import layout
from ..io.outputs import OVERWRITE_FLAG, check_not_input
from ..training.memory_advice import available_memory_bytes, estimate_for_run, memory_advice
from ..training.overfit import OVERFIT_LOSS, OverfitTrainer, overfit_config
from ..training.distributed import (RankFailedError, close_distributed, distributed_mode, env_rank, env_world_size,
                                    explain_collective_failure)
from .command import command

RANK = env_rank()
# Under torchrun every rank prefixes its errors with its rank; only rank 0 prints the rest.
TAG = f"[rank {RANK}/{env_world_size()}] " if env_world_size() > 1 else ""

RULE = "=" * 60


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training YAML (configs/training*.yaml)")
    p.add_argument("--model_config", help="model YAML (configs/model_*.yaml)")
    p.add_argument("--output_dir", help="where checkpoints and metrics go (default: output_dir in the config)")
    p.add_argument("--resume_from", help="a checkpoint directory, or an output directory (its latest checkpoint)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--overwrite_output_dir", OVERWRITE_FLAG, dest="overwrite_output_dir", action="store_true",
                   help="start afresh even if the output directory holds checkpoints (they are deleted)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.add_argument("--estimate_memory", action="store_true",
                   help="print the memory one training step needs (parameters, gradients, optimizer state, "
                        "activations), what is available and, if short, the remedies; then exit")
    p.add_argument("--overfit_batch", action="store_true",
                   help=f"sanity run: train on one repeated batch until the loss is near zero "
                        f"(< {OVERFIT_LOSS}); output in OUTPUT_DIR/overfit_batch unless --output_dir is given")
    p.add_argument("--overfit_steps", type=int, default=300, help="steps of --overfit_batch (default 300)")
    return p


def _config_file(given, ckpt, name: str, flag: str, what: str):
    """The file a flag names, else the resumed checkpoint's copy."""
    if given:
        return given
    if ckpt is not None:
        return ckpt / name
    raise ConfigError(f"{flag} is required (or --resume_from a checkpoint, whose {what} is used)")


def load_configs(args):
    ckpt = resolve_checkpoint(args.resume_from) if args.resume_from else None
    config = TrainingConfig.from_yaml(_config_file(args.config, ckpt, layout.TRAINING_CONFIG, "--config", "config"))
    model_config = TransformerConfig.from_yaml(
        _config_file(args.model_config, ckpt, layout.MODEL_CONFIG, "--model_config", "model config"))
    if args.overfit_batch:
        config = overfit_config(config, args.overfit_steps)
    if args.set:
        config = config.with_overrides(args.set)
    if args.output_dir:
        config = config.replace(output_dir=args.output_dir)
    elif ckpt is not None and not args.config:
        config = config.replace(output_dir=str(ckpt.parent))
    elif args.overfit_batch:
        config = config.replace(output_dir=str(Path(config.output_dir) / "overfit_batch"))
    return config, model_config


def print_memory_estimate(config, model_config, device) -> None:
    t = config.train
    est = estimate_for_run(model_config, t, device)
    print(est)
    available = available_memory_bytes(device, config.mps_memory_fraction)
    if available is not None:
        print(f"  available on {device.type}: {available / 2**30:.3f} GiB")
    advice = memory_advice(model_config, t, device, available)
    print(advice if advice else "  ✅ fits")


def report_overfit(trainer, result) -> int:
    first = trainer.first_loss if trainer.first_loss is not None else float("nan")  # resumed at the end
    last = result["val_loss"]
    if last < OVERFIT_LOSS:
        print(f"\n✅ overfit one batch: loss {first:.4f} → {last:.4f} in {result['step']} steps: the model, "
              "loss and optimizer learn")
        return 0
    print("\n" + format_error(f"overfit one batch: loss {first:.4f} → {last:.4f} in {result['step']} steps, not "
                              f"below {OVERFIT_LOSS}: check the learning rate (--set train.learning_rate=...), more "
                              "--overfit_steps, or a bug in the model or data"), file=sys.stderr)
    return 5


def print_summary(args, config, model_config, device):
    t = config.train
    print(f"📦 PyTorch 버전: {torch.__version__}")
    print(f"💻 디바이스: {device}" + (f" (MPS 메모리 제한: {config.mps_memory_fraction:.0%})" if device.type == "mps" else ""))
    print("\n📄 설정 파일 로드 중...")
    print(f"   ✅ 학습 설정: {args.config or '(checkpoint)'}")
    print(f"   ✅ 모델 설정: {args.model_config or '(checkpoint)'}")
    print(f"\n📂 출력 디렉토리: {config.output_dir}")
    print(f"\n{RULE}\n📊 학습 설정 정보\n{RULE}")
    print("\n🤖 모델:")
    print(f"   - Hidden size: {model_config.hidden_size}")
    print(f"   - Layers: {model_config.num_layers}")
    print(f"   - Heads: {model_config.num_heads} (KV heads: {model_config.num_kv_heads})")
    print(f"   - Vocab size: {model_config.vocab_size}")
    print(f"   - Parameters: {model_config.num_parameters / 1e6:.1f}M ({model_config.num_parameters:,})")
    print("\n🏋 학습:")
    print(f"   - Batch size: {t.batch_size}")
    print(f"   - Gradient accumulation: {t.gradient_accumulation_steps}")
    world = env_world_size()
    print(f"   - Effective batch size: {t.batch_size} x {t.gradient_accumulation_steps}" +
          (f" x {world} processes" if world > 1 else "") + f" = {config.check_effective_batch(world)}")
    mode = distributed_mode(t.distributed, world)
    if mode != "none":
        print(f"   - Distributed: {mode}, {world} process(es), each reading its own 1/{world} of every global batch")
    print(f"   - Sequence length: {t.max_seq_length}")
    print(f"   - Learning rate: {t.learning_rate} (warmup {t.warmup_steps}, {t.lr_schedule} to {t.min_learning_rate})")
    limits = [f"{t.max_epochs:g} passes" if t.max_epochs else "", f"{t.max_time_minutes} min" if t.max_time_minutes else ""]
    print(f"   - Max steps: {t.max_steps:,}" + "".join(f" (or {lim})" for lim in limits if lim))
    print(f"   - Gradient checkpointing: {t.gradient_checkpointing}")
    print(f"   - Compile model: {t.compile_model}")
    print(f"   - Ops: {t.ops}")
    if t.ops == "fused":  # which kernel each op runs here: native, or the device fallback's path
        from .. import ops
        paths = ops.backend_report(device)
        print("   - Op paths on " + device.type + ": " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    print("\n📁 데이터:")
    print(f"   - Tokens: {config.data.tokens}")
    print(f"   - Train: {config.data.train}")
    print(f"   - Valid: {config.data.valid}")
    print(f"   - Tokenizer: {config.data.tokenizer}")
    print(f"\n🎲 Random seed: {config.seed}\n{RULE}")


@record
@command(FileNotFoundError, ValueError, prefix=TAG)
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    trainer = None
    try:
        config, model_config = load_configs(args)
        # Checkpoints go into output_dir beside what is there: only a folder inside the data is refused.
        check_not_input(config.output_dir, [config.data.tokens, config.data.tokenizer], "--output_dir",
                        replaces=False)
        device = pick_device(config.device)
        if args.estimate_memory:
            print_memory_estimate(config, model_config, device)
            return 0
        if RANK == 0:
            print_summary(args, config, model_config, device)
        trainer_class = OverfitTrainer if args.overfit_batch else Trainer
        trainer = trainer_class(model_config, config, resume_from=args.resume_from, show_progress=not args.no_progress,
                                overwrite=args.overwrite_output_dir, sampler=Generator.sample_during_training)
        if RANK == 0:
            print(f"⚙️  Mixed precision: {config.train.mixed_precision} -> {trainer.precision_reason}")
            if args.resume_from:
                print(f"▶️  {args.resume_from} 에서 이어서 학습: step {trainer.step}")
            print(f"💾 설정 저장: {Path(config.output_dir) / 'config.yaml'}")
            print(f"💾 모델 설정 저장: {Path(config.output_dir) / 'model_config.yaml'}")
        result = trainer.train()
    except (TrainingStopped, RankFailedError) as e:  # not the user's input: a diverged run, another rank's failure
        print(format_error(e, TAG), file=sys.stderr)
        return 3 if isinstance(e, TrainingStopped) else EXIT_USER_ERROR
    except RuntimeError as e:
        message = explain_collective_failure(e)
        if message is None:
            raise
        print(format_error(message, TAG), file=sys.stderr)
        return 4
    finally:
        if trainer is not None:
            trainer.close()
        close_distributed()  # a group made before the trainer failed to build
    if RANK != 0:
        return 0
    if args.overfit_batch:
        return report_overfit(trainer, result)
    print(f"\n{RULE}\n✅ 학습 종료 ({result['stop_reason']}): step {result['step']}, "
          f"{result['tokens_seen']:,} tokens, {result['elapsed_s'] / 60:.1f} min")
    print(f"   - Validation loss: {result['val_loss']:.4f} (perplexity {result['val_ppl']:.1f}, "
          f"{result['val_bpb']:.3f} bits/byte)")
    if result.get("sample"):
        print(f"   - Sample: {result['sample']}")
    print(f"   - Checkpoints: {config.output_dir}")
    print(f"   - Loss curve: {result['loss_curve']}\n{RULE}")
    return 0
