#!/usr/bin/env python3
"""lm-evaluation-harness's command line with kr-mini-llm's model and tasks registered.

    python scripts/run_lm_eval.py --model kr-mini-llm --model_args pretrained=checkpoints/demo \\
        --tasks ko_next_sentence [--batch_size 8] [--limit N] [--output_path results/]

Takes exactly lm_eval's arguments (`lm_eval --help`): the harness has no plug-in discovery for
models, so this imports kr_mini_llm.eval.harness (which registers "kr-mini-llm") and adds the
project's own tasks (kr_mini_llm/eval/tasks: ko_next_sentence, offline) to --include_path.
Hub tasks (kobest_boolq, kobest_copa, kobest_hellaswag, kobest_sentineg, kobest_wic, haerae,
kmmlu) download their data from the Hugging Face Hub on first use; without the Hub they stop
with a message that says so.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kr_mini_llm.cli.lm_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
