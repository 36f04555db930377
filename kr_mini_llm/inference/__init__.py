"""Generation: the Generator, sampling, and the KV cache (re-exported from the model)."""
from ..model.kv_cache import KVCache
from .generator import Generator

__all__ = ["Generator", "KVCache"]
