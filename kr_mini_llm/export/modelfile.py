"""Ollama's Modelfile for a GGUF export: `ollama create NAME -f NAME.Modelfile`."""
from __future__ import annotations

from .tokenizer_meta import CHAT_TEMPLATE_GO, GENERATION_DEFAULTS, TokenizerMeta


def modelfile_text(gguf_name: str, meta: TokenizerMeta, context_length: int) -> str:
    d = GENERATION_DEFAULTS
    stops = "".join(f'PARAMETER stop "{meta.pieces[i]}"\n' for i in meta.stop_ids)
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{CHAT_TEMPLATE_GO}"""\n'
            f"{stops}"
            f"PARAMETER temperature {d['temperature']}\n"
            f"PARAMETER top_k {d['top_k']}\n"
            f"PARAMETER top_p {d['top_p']}\n"
            f"PARAMETER repeat_penalty {d['repetition_penalty']}\n"
            f"PARAMETER num_ctx {context_length}\n")
