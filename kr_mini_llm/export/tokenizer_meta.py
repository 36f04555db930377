"""What a runtime must know about our tokenizer, in one place for the GGUF and the HF export.

Our SentencePiece model (data/tokenizer.py) has byte fallback, no dummy prefix, no normalisation,
and fixed special ids; the Generator puts BOS before every prompt and never EOS. The chat
template is data/chat.py's `<|im_start|>{role}\\n{content}<|im_end|>\\n`, here spelled once more in
the two template languages runtimes read (Jinja for llama.cpp and transformers, Go for Ollama);
tests/export checks both against `render_chat`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from ..data.tokenizer import BOS_ID, EOS_ID, IM_END, IM_START, PAD_ID, UNK_ID, Tokenizer

__all__ = ["TokenKind", "TokenizerMeta", "CHAT_TEMPLATE_JINJA", "CHAT_TEMPLATE_GO", "GENERATION_DEFAULTS"]

# transformers and llama.cpp render this with bos_token given; both put BOS at the start (llama.cpp
# drops it again when the vocabulary adds BOS itself), as encode_chat(add_bos=True) does.
CHAT_TEMPLATE_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    f"{{{{ '{IM_START}' + message['role'] + '\\n' + message['content'] + '{IM_END}' + '\\n' }}}}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{{{{ '{IM_START}assistant\\n' }}}}{{% endif %}}"
)

# Ollama's Go template: every message, then the assistant's turn (Ollama adds BOS itself, from the
# GGUF's add_bos_token).
CHAT_TEMPLATE_GO = (
    "{{ range .Messages }}" + IM_START + "{{ .Role }}\n{{ .Content }}" + IM_END + "\n{{ end }}"
    + IM_START + "assistant\n"
)

# Generator.generate's defaults, as Ollama's PARAMETER lines and HF's generation_config.json.
GENERATION_DEFAULTS = {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.0}


class TokenKind:
    """Token types, with llama.cpp's (gguf.TokenType) numbering."""
    NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class TokenizerMeta:
    pieces: List[str]
    scores: List[float]
    kinds: List[int]          # TokenKind per id
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    im_start_id: int
    im_end_id: int
    add_bos: bool = True      # the Generator and encode_chat put BOS first
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str = CHAT_TEMPLATE_JINJA

    @property
    def size(self) -> int:
        return len(self.pieces)

    @property
    def stop_ids(self) -> List[int]:
        """Where generation ends: EOS, and <|im_end|> (the end of a chat turn)."""
        return [self.eos_id, self.im_end_id]

    @property
    def special_tokens(self) -> dict:
        """piece -> id of the tokens that are never text (control and unknown)."""
        return {p: i for i, (p, k) in enumerate(zip(self.pieces, self.kinds))
                if k in (TokenKind.CONTROL, TokenKind.UNKNOWN)}

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> "TokenizerMeta":
        sp = tok.sp
        ids = {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "unk_id": tok.unk_id,
               "im_start_id": tok.im_start_id, "im_end_id": tok.im_end_id}
        expected = {"bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID, "unk_id": UNK_ID}
        wrong = {k: v for k, v in ids.items() if k in expected and v != expected[k]}
        if wrong:
            raise ValueError(f"{tok.path}: special ids {wrong} differ from the project's fixed ids {expected}; "
                             "train the tokenizer with scripts/train_tokenizer.py")
        pieces, scores, kinds = [], [], []
        chat = {tok.im_start_id, tok.im_end_id}
        for i in range(sp.get_piece_size()):
            pieces.append(sp.id_to_piece(i))
            scores.append(float(sp.get_score(i)))
            if sp.is_unknown(i):
                kind = TokenKind.UNKNOWN
            elif sp.is_control(i) or i in chat:   # <|im_start|>/<|im_end|> are never text
                kind = TokenKind.CONTROL
            elif sp.is_byte(i):
                kind = TokenKind.BYTE
            elif sp.is_unused(i):
                kind = TokenKind.UNUSED
            else:
                kind = TokenKind.NORMAL
            kinds.append(kind)
        return cls(pieces, scores, kinds, **ids)

