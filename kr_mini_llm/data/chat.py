"""The chat template, written once: used by SFT data, LoRA training and the Generator.

    <|im_start|>{role}\n{content}<|im_end|>\n      (per message)

`render_chat` gives the text; `encode_chat` gives token ids and a mask that is 1 on the
tokens the model must learn to produce (assistant contents and their <|im_end|>), for
--mask-prompt in SFT. The special tokens are always the single ids 4 and 5, never spelled
out by the text encoder; text inside a message that looks like a special token stays text.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .tokenizer import IM_END, IM_START

__all__ = ["format_message", "render_chat", "encode_chat", "ROLES"]

ROLES = ("system", "user", "assistant")


def _check(messages: Sequence[Dict[str, str]]):
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if not isinstance(m["role"], str) or not m["role"] or "\n" in m["role"] or IM_START in m["role"] or IM_END in m["role"]:
            raise ValueError(f"message {i}: bad role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: content must be a str, got {type(m['content']).__name__}")


def format_message(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_chat(messages: Sequence[Dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Text of a conversation; with add_generation_prompt, ends with '<|im_start|>assistant\\n'."""
    _check(messages)
    text = "".join(format_message(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def _encode_text(tokenizer, text: str) -> List[int]:
    """Encode text, keeping literal '<|im_start|>'/'<|im_end|>' strings as ordinary text."""
    return tokenizer.encode(text, special_tokens=False) if text else []


def encode_chat(messages: Sequence[Dict[str, str]], tokenizer, add_generation_prompt: bool = False,
                add_bos: bool = True, train_on: Sequence[str] = ("assistant",)) -> Tuple[List[int], List[int]]:
    """(ids, mask): ids of render_chat(messages, add_generation_prompt) (with bos first when
    add_bos), and mask[i] = 1 where ids[i] is part of a message whose role is in `train_on`
    (its content and closing <|im_end|>), else 0. Decoding ids (skipping bos) gives the rendered text."""
    _check(messages)
    ids: List[int] = [tokenizer.bos_id] if add_bos else []
    mask: List[int] = [0] * len(ids)
    nl = _encode_text(tokenizer, "\n")
    for m in messages:
        head = [tokenizer.im_start_id] + _encode_text(tokenizer, m["role"] + "\n")
        body = _encode_text(tokenizer, m["content"]) + [tokenizer.im_end_id]
        learn = 1 if m["role"] in train_on else 0
        ids += head + body + nl
        mask += [0] * len(head) + [learn] * len(body) + [0] * len(nl)
    if add_generation_prompt:
        head = [tokenizer.im_start_id] + _encode_text(tokenizer, "assistant\n")
        ids += head
        mask += [0] * len(head)
    return ids, mask
