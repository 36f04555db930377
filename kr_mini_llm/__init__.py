"""kr-mini-llm: train small Korean language models from scratch on fused C++ kernels."""
from ._version import check_torch_version, __version__

check_torch_version()

from . import ops  # noqa: E402  (registers the custom ops)
from .model import ConfigError, KVCache, Transformer, TransformerConfig  # noqa: E402

__all__ = ["ops", "ConfigError", "KVCache", "Transformer", "TransformerConfig", "__version__"]
