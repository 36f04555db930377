"""kr-mini-llm: train small Korean language models from scratch on fused C++ kernels."""
from ._version import check_torch_version, __version__

check_torch_version()


def _load_native_override() -> None:
    """KR_MINI_LLM_NATIVE_LIB=/path/to/_C*.so loads that build of the kernels instead of the one in
    the package (the benchmarks' --isa runs use a build per ISA level)."""
    import importlib.util
    import os
    import sys

    path = os.environ.get("KR_MINI_LLM_NATIVE_LIB")
    if path and "kr_mini_llm._C" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kr_mini_llm._C", path)
        if spec is None or not os.path.isfile(path):
            raise ImportError(f"KR_MINI_LLM_NATIVE_LIB={path} is not a built kr_mini_llm _C library")
        module = importlib.util.module_from_spec(spec)
        sys.modules["kr_mini_llm._C"] = module
        spec.loader.exec_module(module)


_load_native_override()

from . import ops  # noqa: E402  (registers the custom ops)
from .model import ConfigError, KVCache, Transformer, TransformerConfig  # noqa: E402

__all__ = ["ops", "ConfigError", "KVCache", "Transformer", "TransformerConfig", "__version__"]
