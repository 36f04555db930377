"""Export to the runtimes people run small models with: GGUF (llama.cpp, Ollama) and HF transformers.

    from kr_mini_llm.export import export_model
    export_model("checkpoints/demo", "exports/demo-q8_0.gguf", format="gguf", outtype="q8_0")

The tokenizer facts both formats need (pieces, types, special ids, BOS rule, chat template) live
in tokenizer_meta.py.
"""
from . import llama_cpp
from .errors import ExportError
from .exporter import FORMATS, ExportResult, export_model, load_for_export, modelfile_path
from .tokenizer_meta import CHAT_TEMPLATE_GO, CHAT_TEMPLATE_JINJA, TokenizerMeta

__all__ = ["llama_cpp", "CHAT_TEMPLATE_GO", "CHAT_TEMPLATE_JINJA", "ExportError", "ExportResult", "FORMATS", "TokenizerMeta",
           "export_model", "load_for_export", "modelfile_path"]
