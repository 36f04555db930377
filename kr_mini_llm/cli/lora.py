"""Fine-tuning (LoRA, DoRA or full) with mlx-lm's flags: `kr-mini-llm lora` = `scripts/lora.py`
= `python -m kr_mini_llm.lora`.

    python scripts/lora.py --model checkpoints/demo --train --data data/sft --iters 200 \\
        --batch-size 4 --num-layers 4 --learning-rate 1e-4 --mask-prompt --adapter-path adapters/demo
    python scripts/lora.py --model checkpoints/demo --test --data data/sft --adapter-path adapters/demo
    python scripts/lora.py --model checkpoints/demo --train --data data/sft --fine-tune-type full \\
        --optimizer adamw --adapter-path checkpoints/demo-sft   # every weight: checkpoint-N directories
    python scripts/lora.py -c lora.yaml            # the same keys in YAML (flags given here win)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..io.layout import ADAPTER_WEIGHTS
from ..io.outputs import OVERWRITE_FLAG
from ..lora.apply import LoRAError
from .command import command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "lora", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=None)
    a = p.add_argument
    a("-c", "--config", help="YAML file with any of these settings (underscored names: learning_rate)")
    a("--model", help="base model: a checkpoint or output directory of scripts/train.py, or a HF Llama/Qwen3 directory")
    a("--train", action="store_true", default=None, help="fine-tune")
    a("--test", action="store_true", default=None, help="evaluate the adapters on test.jsonl")
    a("--data", help="directory with train.jsonl and valid.jsonl (and test.jsonl) (default: data)")
    a("--fine-tune-type", choices=["lora", "dora", "full"],
      help="lora (default) or dora (weight-decomposed LoRA): adapters; full: every weight, saved as "
           "checkpoint-N directories in --adapter-path that every loader takes")
    a("--optimizer", choices=["adam", "adamw", "sgd"],
      help="default: adam (adamw with --fine-tune-type full: the pretraining optimizer, no decay on norms)")
    a("--mask-prompt", action="store_true", default=None, help="train on the answer tokens only")
    a("--num-layers", type=int, help="adapters on the last N blocks, -1 for all (default: 16, or all when fewer)")
    a("--batch-size", type=int, help="default: 4")
    a("--iters", type=int, help="iterations to train (counted from the start when resuming) (default: 1000)")
    a("--val-batches", type=int, help="validation batches per evaluation, -1 for all (default: 25)")
    a("--learning-rate", type=float, help="default: 1e-5")
    a("--steps-per-report", type=int, help="iterations between loss reports (default: 10)")
    a("--steps-per-eval", type=int, help="iterations between validations (default: 200)")
    a("--resume-adapter-file", help="adapters.safetensors (or NNNNNNN_adapters.safetensors) to continue from; "
                                    "full: a checkpoint-N directory (or --adapter-path, for its latest)")
    a("--adapter-path", help="where adapters and adapter_config.json go; full: the checkpoint directories "
                             "(default: adapters)")
    a("--save-every", type=int, help="iterations between numbered adapter files (default: 100)")
    a("--test-batches", type=int, help="test batches, -1 for all (default: 500)")
    a("--max-seq-length", type=int, help="longer rows are truncated (default: the model's context length)")
    a("--grad-checkpoint", action="store_true", default=None, help="recompute activations to save memory")
    a("--grad-accumulation-steps", type=int, help="batches per optimizer step (default: 1)")
    a("--seed", type=int, help="default: 0")
    a("--lora-rank", type=int, help="default: 8")
    a("--lora-scale", type=float, help="multiplies the adapter's update (PEFT's lora_alpha / rank) (default: 20.0)")
    a("--lora-dropout", type=float, help="dropout on the adapter input (default: 0.0)")
    a("--lora-keys", nargs="+", help="projections to adapt: q k v o (default) gate up down, or attn, mlp, all")
    a("--lr-schedule", choices=["constant", "cosine", "linear"], help="after --warmup-steps (default: constant)")
    a("--warmup-steps", type=int, help="default: 0")
    a("--weight-decay", type=float, help="adamw only (default: 0.01)")
    a("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    a("--tokenizer", help="tokenizer.model, when --model holds none")
    a("--threads", type=int, help="CPU threads (default: torch's)")
    a("--overwrite-adapters", OVERWRITE_FLAG, dest="overwrite_adapters", action="store_true", help="replace adapters (or checkpoints) already in --adapter-path")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--lora-layers", type=int, help=argparse.SUPPRESS)  # the old mlx-lm name: answered with a hint
    return p


_FLAT_LORA = {"lora_rank": "rank", "lora_scale": "scale", "lora_dropout": "dropout", "lora_keys": "keys"}
_CLI_ONLY = ("config", "overwrite_adapters", "no_progress", "lora_layers")


def load_config(args, config_class=None):
    from ..lora.config import LoRAConfig

    config_class = config_class or LoRAConfig
    file_values = config_class.from_yaml(args.config) if args.config else {}
    cli = {k: v for k, v in vars(args).items() if k not in _CLI_ONLY and k not in _FLAT_LORA}
    cli["lora_parameters"] = {v: getattr(args, k) for k, v in _FLAT_LORA.items()}
    return config_class.merged(file_values, cli, where=args.config or "command line")


@command(FileNotFoundError, ValueError)  # ValueError: the config and shape checks of the model and trainer
def main(argv=None, prog: str | None = None) -> int:
    from ..data.sft import load_split
    from ..data.tokenizer import Tokenizer

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.lora_layers is not None:
        parser.error("--lora-layers is the old name: use --num-layers")
    cfg = load_config(args)
    base, max_len = load_base_for_run(cfg)
    print("Loading datasets")
    tok = Tokenizer(base.tokenizer_path)
    train_set = valid_set = None
    if cfg.train:
        train_set = load_split(cfg.data, "train", tok, max_len, cfg.mask_prompt)
        valid_set = load_split(cfg.data, "valid", tok, max_len, cfg.mask_prompt)
    test_set = load_split(cfg.data, "test", tok, max_len, cfg.mask_prompt) if cfg.test else None
    for ds in (train_set, valid_set, test_set):
        if ds is not None:
            print(f"  {ds.summary()}")
    if cfg.train:
        result = _train(cfg, base, train_set, valid_set, args)
        model, device = result.model, result.device
    else:
        model, device = _load_for_test(cfg, base)
    if cfg.test:
        from ..lora.trainer import evaluate_loss
        import math

        print("Testing")
        loss, _ = evaluate_loss(model, test_set, cfg.batch_size, cfg.test_batches, device)
        print(f"Test loss {loss:.3f}, Test ppl {math.exp(min(loss, 50)):.3f}.")
    return 0


def load_base_for_run(cfg):
    """(base model, sequence length) of a fine-tuning run (LoRA, DoRA, full or DPO), after the
    one-process check: the model loaded and described, --max-seq-length checked against its context."""
    from ..lora.base import load_base_model
    from ..lora.trainer import check_one_process

    check_one_process()
    print("Loading pretrained model")
    base = load_base_model(cfg.model, cfg.tokenizer)
    mc = base.model.config
    print(f"  {base.source} ({base.kind}): {mc.num_layers} layers, hidden {mc.hidden_size}, "
          f"vocab {mc.vocab_size}, context {mc.max_seq_length}")
    max_len = cfg.max_seq_length or mc.max_seq_length
    if max_len > mc.max_seq_length:
        raise LoRAError(f"--max-seq-length {max_len} is longer than the model's context ({mc.max_seq_length}); "
                        f"use at most {mc.max_seq_length}")
    return base, max_len


def _train(cfg, base, train_set, valid_set, args, trainer_class=None):
    from ..checkpoint import resolve_checkpoint
    from ..training.trainer import TrainingStopped
    from ..lora.trainer import LoRATrainer

    trainer = (trainer_class or LoRATrainer)(cfg, base, train_set, valid_set, show_progress=not args.no_progress,
                                             overwrite=args.overwrite_adapters)
    describe_run(cfg, trainer, base)
    print(f"Starting training..., iters: {cfg.iters}")
    start = time.time()
    try:
        trainer.train()
    except TrainingStopped as e:
        raise LoRAError(str(e).replace("train.learning_rate", "--learning-rate").replace("--resume_from",
                                                                                       "--resume-adapter-file"))
    out = Path(cfg.adapter_path)
    if cfg.fine_tune_type == "full":
        print(f"Saved the fine-tuned model to {resolve_checkpoint(out)} (give --model {out} to any command).")
    else:
        print(f"Saved final adapter weights to {out / ADAPTER_WEIGHTS}.")
    print(f"  {time.time() - start:.1f}s; adapter_config.json and metrics.jsonl in {out}")
    return trainer


def describe_run(cfg, trainer, base) -> None:
    lp = cfg.lora_parameters
    if cfg.fine_tune_type != "full":
        print(f"  {cfg.fine_tune_type.replace('lora', 'LoRA').replace('dora', 'DoRA')}: rank {lp.rank}, scale "
              f"{lp.scale}, dropout {lp.dropout}, keys {', '.join(lp.keys)}, "
              f"last {trainer.num_layers if trainer.num_layers != -1 else base.model.config.num_layers} blocks")
    else:
        print(f"  full fine-tuning: every weight, optimizer {cfg.optimizer}")
    print(trainer.describe())


def _load_for_test(cfg, base):
    from ..device import pick_device
    from ..checkpoint import list_checkpoints, load_model
    from ..lora.adapters import load_adapters

    device = pick_device(cfg.device)
    path = Path(cfg.adapter_path)
    if cfg.fine_tune_type == "full":
        if list_checkpoints(path):
            model, source = load_model(path)
            print(f"  fine-tuned model: {source}")
            return model.to(device), device
        print(f"  no checkpoints in {path}: testing the base model")
    elif (path / ADAPTER_WEIGHTS).is_file():
        load_adapters(base.model, path)
        print(f"  adapters: {path}")
    else:
        print(f"  no adapters in {path}: testing the base model")
    return base.model.to(device), device

