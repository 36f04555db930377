#!/usr/bin/env python3
"""Preference tuning (DPO) with scripts/lora.py's flags (same as `kr-mini-llm dpo`); see --help."""
import sys

from kr_mini_llm.cli.dpo import main

if __name__ == "__main__":
    sys.exit(main())
