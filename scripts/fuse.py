#!/usr/bin/env python3
"""Fuse LoRA adapters into their base model: the same code as `kr-mini-llm fuse` (kr_mini_llm/cli/fuse.py); see --help."""
import sys

from kr_mini_llm.cli.fuse import main

if __name__ == "__main__":
    sys.exit(main())
