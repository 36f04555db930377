#!/usr/bin/env python3
"""Serve a model over an OpenAI-compatible HTTP API with a chat page (same as `python -m kr_mini_llm.serve`); see --help."""
import sys

from kr_mini_llm.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
