#!/usr/bin/env python3
"""Turn a sharded FSDP checkpoint (dcp/) into the ordinary single-file checkpoint.

    python scripts/consolidate.py checkpoints/run/checkpoint-5000            # adds model.safetensors + optimizer.pt
    python scripts/consolidate.py checkpoints/run --output checkpoints/final # latest checkpoint -> a new directory

One process on the CPU, with memory for the whole model and optimizer. No consolidation is needed
to resume (at any world size) or to load the model with Generator.from_pretrained: both read
the shards; the single file is for tools that expect model.safetensors.
"""
import argparse
import sys

from kr_mini_llm.cli.command import command
from kr_mini_llm.training.run_checkpoint import consolidate_checkpoint


@command(FileNotFoundError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint-STEP directory with dcp/, or an output directory (its latest)")
    p.add_argument("--output", help="write a new ordinary checkpoint here (without the shards) instead of in place")
    args = p.parse_args(argv)
    out = consolidate_checkpoint(args.checkpoint, args.output)
    print(f"✅ {out}/model.safetensors, {out}/optimizer.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
