"""An OpenAI-compatible server with continuous batching and a chat page (scripts/serve.py)."""
from .app import create_app
from .engine import Engine, SamplingParams

__all__ = ["Engine", "SamplingParams", "create_app"]
