"""`kr-mini-llm COMMAND ...`: one command line for the whole toolkit.

Each command is the same code as its script (`kr-mini-llm train` = `python scripts/train.py`): the
module here holds `build_parser(prog)` and `main(argv, prog)`, the script is a thin wrapper. The
command's module is imported only when it runs, so `kr-mini-llm --help` starts at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str      # holds main(argv, prog)
    script: str      # the scripts/ file that runs the same code
    summary: str


COMMANDS = {
    "prepare": Command("kr_mini_llm.cli.prepare", "prepare_data.py", "clean, deduplicate, split a corpus; token shards"),
    "tokenizer": Command("kr_mini_llm.cli.tokenizer", "train_tokenizer.py", "train the SentencePiece tokenizer"),
    "train": Command("kr_mini_llm.cli.train", "train.py", "pretrain a model (one process or torchrun)"),
    "generate": Command("kr_mini_llm.cli.generate", "generate.py", "generate text with a trained model"),
    "lora": Command("kr_mini_llm.cli.lora", "lora.py", "fine-tuning (LoRA, DoRA or full) with mlx-lm's flags"),
    "dpo": Command("kr_mini_llm.cli.dpo", "dpo.py", "preference tuning (DPO) on chosen/rejected answer pairs"),
    "fuse": Command("kr_mini_llm.cli.fuse", "fuse.py", "fuse LoRA adapters into their base model"),
    "export": Command("kr_mini_llm.cli.export", "export.py", "export to GGUF (llama.cpp, Ollama) or HF"),
    "quantize": Command("kr_mini_llm.cli.quantize", "quantize.py", "pack weights as int8 or bf16 for CPU inference"),
    "serve": Command("kr_mini_llm.cli.serve", "serve.py", "serve a model over an OpenAI-compatible HTTP API"),
    "sweep": Command("kr_mini_llm.cli.sweep", "sweep.py", "search training settings with Optuna (timed trials, pruning)"),
    "evaluate": Command("kr_mini_llm.cli.evaluate", "evaluate.py", "test loss, tokenizer, speed and samples of models"),
    "bench": Command("kr_mini_llm.cli.bench", "bench_*.py", "run a benchmark (scripts/bench_*.py)"),
}
PROG = "kr-mini-llm"


class _OneLinePerCommand(argparse.HelpFormatter):
    """argparse sizes the help column without the commands' extra indent, so a long command name
    would push its summary to the next line; this counts it."""

    def add_argument(self, action):
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):
                self._action_max_length = max(self._action_max_length,
                                              len(self._format_action_invocation(sub)) + self._current_indent)


def build_parser() -> argparse.ArgumentParser:
    """The top level, for --help and for rejecting an unknown command; each command parses its own flags."""
    from .._version import __version__

    p = argparse.ArgumentParser(
        prog=PROG, description="Train small Korean language models, from the corpus to serving. Each command "
        "runs the same code as its script: prepare = scripts/prepare_data.py, tokenizer = scripts/train_tokenizer.py, "
        "bench NAME = scripts/bench_NAME.py, any other = scripts/COMMAND.py.",
        epilog=f"`{PROG} COMMAND --help` shows a command's flags.",
        formatter_class=_OneLinePerCommand)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.summary, add_help=False)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv)  # --help, --version and an unknown command exit here
        parser.print_help(sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name].module)
    return module.main(rest, prog=f"{PROG} {name}")
