#!/usr/bin/env python3
"""Search training settings with Optuna: the same code as `kr-mini-llm sweep` (kr_mini_llm/cli/sweep.py); see --help."""
import sys

from kr_mini_llm.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
