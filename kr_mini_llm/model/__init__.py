"""The model: config, layers, the decoder and its KV cache."""
from .config import ConfigError, TransformerConfig
from .kv_cache import KVCache
from .transformer import Transformer

__all__ = ["ConfigError", "KVCache", "Transformer", "TransformerConfig"]
