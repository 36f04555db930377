#!/usr/bin/env python3
"""Serve a model over an OpenAI-compatible HTTP API, with a chat page at / (= `python -m kr_mini_llm.serve`).

See --help, and the README's "Serving" section.
"""
import sys

from kr_mini_llm.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
