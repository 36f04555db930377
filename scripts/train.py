#!/usr/bin/env python3
"""Pretrain a kr-mini-llm model: the same code as `kr-mini-llm train` (kr_mini_llm/cli/train.py); see --help."""
import sys

from kr_mini_llm.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
