"""Korean data pipeline: corpus extraction, cleaning, splitting, tokenizer, token shards, windows.

Importing this package is cheap: submodules load on first use of their names.

    from kr_mini_llm.data import Tokenizer, TokenShards, RandomWindows, EvalWindows, encode_chat
"""
from importlib import import_module

_EXPORTS = {
    "Tokenizer": "tokenizer", "TokenizerError": "tokenizer", "train_tokenizer": "tokenizer",
    "SPECIAL_TOKENS": "tokenizer", "IM_START": "tokenizer", "IM_END": "tokenizer",
    "TokenShards": "datasets", "RandomWindows": "datasets", "EvalWindows": "datasets",
    "ShardError": "shards", "read_header": "shards", "write_shard": "shards",
    "CleanConfig": "cleaning", "clean_documents": "cleaning", "EmptyCorpusError": "cleaning",
    "read_documents": "readers", "InputError": "readers",
    "split_documents": "split",
    "obtain_sources": "sources", "SourceUnavailable": "sources", "DEFAULT_SOURCES": "sources",
    "prepare_text": "pipeline", "tokenize_splits": "pipeline",
    "render_chat": "chat", "encode_chat": "chat", "format_message": "chat",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
