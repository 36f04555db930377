"""`kr-mini-llm dpo` / `scripts/dpo.py`: preference tuning (DPO) with scripts/lora.py's flags.

    python scripts/dpo.py --model models/demo-sft --train --data data/dpo --beta 0.1 --iters 200 \\
        --fine-tune-type lora --num-layers -1 --learning-rate 1e-4 --adapter-path adapters/demo-dpo
    python scripts/dpo.py --model models/demo-sft --test --data data/dpo --adapter-path adapters/demo-dpo

data/ holds train.jsonl and valid.jsonl (test.jsonl for --test) of preference pairs:
{"prompt", "chosen", "rejected"} strings, or TRL's conversational form (message lists). The output
is what scripts/lora.py writes for the same --fine-tune-type (adapters, or checkpoint-N directories
for full), so generate, fuse, export, serve and evaluate take it the same way.
"""
from __future__ import annotations

from . import lora as lora_cli
from .command import command


def build_parser(prog: str | None = None):
    p = lora_cli.build_parser(prog or "dpo")
    p.description = __doc__
    p.add_argument("--beta", type=float, help="how strongly the model is held to the reference (default: 0.1)")
    p.add_argument("--precompute-ref-log-probs", action="store_true", default=None,
                   help="compute the reference log-probabilities once before training (no reference copy kept)")
    for action in p._actions:
        if action.dest == "adapter_path":
            action.help = "where the adapters (or, full, the checkpoints) and adapter_config.json go (default: dpo)"
        elif action.dest == "learning_rate":
            action.help = "default: 5e-6"
        elif action.dest == "mask_prompt":
            action.help = "no effect: DPO scores the answers only"
    return p


@command(FileNotFoundError, ValueError)  # ValueError: the config and shape checks of the model and trainer
def main(argv=None, prog: str | None = None) -> int:
    from ..data.tokenizer import Tokenizer
    from ..dpo.config import DPOConfig
    from ..dpo.data import load_preference_split
    from ..dpo.trainer import DPOTrainer

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.lora_layers is not None:
        parser.error("--lora-layers is the old name: use --num-layers")
    cfg = lora_cli.load_config(args, DPOConfig)
    base, max_len = lora_cli.load_base_for_run(cfg)
    print("Loading preference pairs")
    tok = Tokenizer(base.tokenizer_path)
    splits = (["train", "valid"] if cfg.train else []) + (["test"] if cfg.test else [])
    sets = {s: load_preference_split(cfg.data, s, tok, max_len) for s in splits}
    for ds in sets.values():
        print(f"  {ds.summary()}")
    print(f"  DPO: beta {cfg.beta}, reference: the base model"
          + (" (log-probabilities precomputed)" if cfg.precompute_ref_log_probs else ""))
    if cfg.train:
        trainer = lora_cli._train(cfg, base, sets["train"], sets["valid"], args, trainer_class=DPOTrainer)
    if cfg.test:
        print("Testing")
        result = _test(cfg, base, tok, sets["test"], trainer if cfg.train else None)
        print(f"Test loss {result['val_loss']:.3f}, Test reward accuracy {result['val_reward_accuracy']:.3f}, "
              f"Test reward margin {result['val_reward_margin']:.3f}.")
    return 0


def _test(cfg, base, tokenizer, test_set, trainer) -> dict:
    """DPO loss and reward accuracy on test.jsonl: of the model just trained, or of --adapter-path's."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from ..dpo.trainer import DPOTask

    if trainer is not None:
        return trainer.task.evaluate_on(trainer, test_set, cfg.test_batches)
    model, device = lora_cli._load_for_test(cfg, base)
    task = DPOTask(cfg, base, None, test_set)
    # The reference is the base: the loaded model with its adapters off, or the base itself beside a full fine-tune.
    task.reference = base.model.to(device).eval() if model is not base.model else None
    run = SimpleNamespace(model=model, device=device, autocast=nullcontext, tokenizer=tokenizer)
    return task.evaluate_on(run, test_set, cfg.test_batches)

