#!/usr/bin/env python3
"""Evaluate one or more trained models: the same code as `kr-mini-llm evaluate` (kr_mini_llm/cli/evaluate.py); see --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kr_mini_llm.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
