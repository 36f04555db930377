#!/usr/bin/env python3
"""Prepare Korean training data: the same code as `kr-mini-llm prepare` (kr_mini_llm/cli/prepare.py); see --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kr_mini_llm.cli.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
