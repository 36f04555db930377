#!/usr/bin/env python3
"""Save a model's weights packed for CPU inference (int8 or bf16): the same code as `kr-mini-llm quantize` (kr_mini_llm/cli/quantize.py); see --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kr_mini_llm.cli.quantize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
