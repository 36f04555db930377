#!/usr/bin/env python3
"""Export a model to GGUF or to a HF directory: the same code as `kr-mini-llm export` (kr_mini_llm/cli/export.py); see --help."""
import sys

from kr_mini_llm.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
