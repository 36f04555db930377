#!/usr/bin/env python3
"""Train the SentencePiece tokenizer: the same code as `kr-mini-llm tokenizer` (kr_mini_llm/cli/tokenizer.py); see --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kr_mini_llm.cli.tokenizer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
