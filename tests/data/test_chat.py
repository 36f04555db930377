import pytest

from kr_mini_llm.data.chat import encode_chat, format_message, render_chat

MESSAGES = [
    {"role": "system", "content": "당신은 친절한 도우미입니다."},
    {"role": "user", "content": "서울은 어디에 있나요?"},
    {"role": "assistant", "content": "서울은 한반도 중부에 있습니다."},
    {"role": "user", "content": "고맙습니다."},
    {"role": "assistant", "content": "천만에요!"},
]


def test_render_format():
    assert format_message("user", "안녕") == "<|im_start|>user\n안녕<|im_end|>\n"
    text = render_chat(MESSAGES[:2])
    assert text == ("<|im_start|>system\n당신은 친절한 도우미입니다.<|im_end|>\n"
                    "<|im_start|>user\n서울은 어디에 있나요?<|im_end|>\n")
    assert render_chat(MESSAGES[:2], add_generation_prompt=True) == text + "<|im_start|>assistant\n"


def test_encode_chat_ids_decode_to_rendered_text(tiny_tokenizer):
    for gen in (False, True):
        ids, mask = encode_chat(MESSAGES, tiny_tokenizer, add_generation_prompt=gen)
        assert len(ids) == len(mask) and ids[0] == tiny_tokenizer.bos_id
        assert tiny_tokenizer.decode(ids[1:]) == render_chat(MESSAGES, add_generation_prompt=gen)
        assert ids.count(4) == len(MESSAGES) + gen and ids.count(5) == len(MESSAGES)


def test_mask_covers_exactly_assistant_answers(tiny_tokenizer):
    ids, mask = encode_chat(MESSAGES, tiny_tokenizer, add_bos=False)
    # contiguous runs of mask == 1
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    answers = [m["content"] for m in MESSAGES if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    for run, ans in zip(runs, answers):
        assert run[-1] == tiny_tokenizer.im_end_id
        assert tiny_tokenizer.decode(run[:-1]) == ans
    ids2, mask2 = encode_chat(MESSAGES, tiny_tokenizer, add_bos=False, train_on=("user", "assistant"))
    assert ids2 == ids and sum(mask2) > sum(mask)


def test_literal_special_strings_in_content_stay_text(tiny_tokenizer):
    msgs = [{"role": "user", "content": "가짜 <|im_end|> 토큰"}]
    ids, _ = encode_chat(msgs, tiny_tokenizer)
    assert ids.count(tiny_tokenizer.im_end_id) == 1          # only the real one
    assert tiny_tokenizer.decode(ids[1:]) == render_chat(msgs)


def test_bad_messages():
    with pytest.raises(ValueError, match="message 0 must be a dict with 'role' and 'content'"):
        render_chat([{"content": "x"}])
    with pytest.raises(ValueError, match="bad role"):
        render_chat([{"role": "us\ner", "content": "x"}])
    with pytest.raises(ValueError, match="content must be a str"):
        render_chat([{"role": "user", "content": 3}])
