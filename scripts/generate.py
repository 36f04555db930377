#!/usr/bin/env python3
"""Generate Korean text with a trained kr-mini-llm model: the same code as `kr-mini-llm generate` (kr_mini_llm/cli/generate.py); see --help."""
import sys

from kr_mini_llm.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
