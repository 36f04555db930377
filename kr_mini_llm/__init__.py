"""kr-mini-llm: train small Korean language models from scratch on fused C++ kernels."""
from ._version import check_torch_version, __version__

check_torch_version()

from . import ops  # noqa: E402  (registers the custom ops)

__all__ = ["ops", "__version__"]
