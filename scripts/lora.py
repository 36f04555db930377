#!/usr/bin/env python3
"""LoRA fine-tuning with mlx-lm's flags (same as `python -m kr_mini_llm.lora`); see --help."""
import sys

from kr_mini_llm.cli.lora import main

if __name__ == "__main__":
    sys.exit(main())
