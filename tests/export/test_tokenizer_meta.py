"""The tokenizer facts both exports carry, and the chat template in Jinja and Go against render_chat."""
import re

import jinja2
import pytest

from kr_mini_llm.data.chat import render_chat
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.export import CHAT_TEMPLATE_GO, CHAT_TEMPLATE_JINJA, TokenizerMeta
from kr_mini_llm.export.tokenizer_meta import TokenKind

CONVERSATIONS = [
    [{"role": "user", "content": "안녕하세요?"}],
    [{"role": "system", "content": "당신은 친절한 도우미입니다."}, {"role": "user", "content": "수도는?\n짧게요."},
     {"role": "assistant", "content": "서울입니다."}, {"role": "user", "content": "고마워요 😀"}],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def meta(tokenizer_file):
    return TokenizerMeta.from_tokenizer(Tokenizer(tokenizer_file))


def test_token_kinds_and_ids(meta, tokenizer_file):
    tok = Tokenizer(tokenizer_file)
    assert meta.size == tok.vocab_size
    assert meta.pieces[:6] == ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    assert meta.kinds[:6] == [TokenKind.CONTROL, TokenKind.UNKNOWN] + [TokenKind.CONTROL] * 4
    assert (meta.bos_id, meta.eos_id, meta.pad_id, meta.unk_id) == (2, 3, 0, 1)
    assert meta.add_bos and not meta.add_eos and not meta.add_space_prefix
    byte_ids = [i for i, k in enumerate(meta.kinds) if k == TokenKind.BYTE]
    assert [meta.pieces[i] for i in byte_ids] == [f"<0x{b:02X}>" for b in range(256)]
    normal = [i for i, k in enumerate(meta.kinds) if k == TokenKind.NORMAL]
    assert len(normal) == meta.size - 6 - 256
    assert all(s <= 0 for s in (meta.scores[i] for i in normal)) and len({meta.scores[i] for i in normal}) > 1
    assert meta.stop_ids == [tok.eos_id, tok.im_end_id]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_jinja_template_renders_render_chat(messages, add_generation_prompt):
    template = jinja2.Environment().from_string(CHAT_TEMPLATE_JINJA)
    text = template.render(messages=messages, bos_token="<s>", add_generation_prompt=add_generation_prompt)
    assert text == "<s>" + render_chat(messages, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_go_template_renders_render_chat(messages):
    # Ollama's template has one range over .Messages: expand it by hand (no Go here) and compare.
    m = re.fullmatch(r"\{\{ range \.Messages \}\}(.*)\{\{ end \}\}(.*)", CHAT_TEMPLATE_GO, re.S)
    assert m, CHAT_TEMPLATE_GO
    body, tail = m.groups()
    assert "{{" not in tail and set(re.findall(r"\{\{.*?\}\}", body)) == {"{{ .Role }}", "{{ .Content }}"}
    text = "".join(body.replace("{{ .Role }}", x["role"]).replace("{{ .Content }}", x["content"]) for x in messages)
    assert text + tail == render_chat(messages, add_generation_prompt=True)
