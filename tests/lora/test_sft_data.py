"""SFT data: the row forms, prompt masking against a hand-built batch, truncation, batching."""
import json

import pytest
import torch
import torch.nn.functional as F

from kr_mini_llm import Transformer
from kr_mini_llm.data.chat import encode_chat
from kr_mini_llm.data.sft import (IGNORE_INDEX, SFTBatches, SFTDataError, SFTDataset, collate, load_split,
                                  row_to_ids)
from kr_mini_llm.data.tokenizer import Tokenizer

from .conftest import tiny_config, write_jsonl


@pytest.fixture(scope="module")
def tok(tokenizer_path):
    return Tokenizer(tokenizer_path)


def test_every_row_form_goes_through_the_one_chat_template(tok):
    chat = [{"role": "user", "content": "사과를 샀습니다."}, {"role": "assistant", "content": "좋습니다."}]
    expected = encode_chat(chat, tok)
    assert row_to_ids({"messages": chat}, tok)[:2] == expected
    assert row_to_ids({"prompt": "사과를 샀습니다.", "completion": "좋습니다."}, tok)[:2] == expected
    assert row_to_ids({"instruction": "사과를 샀습니다.", "output": "좋습니다."}, tok)[:2] == expected
    with_input = encode_chat([{"role": "user", "content": "번역하세요\n\n사과"}, chat[1]], tok)
    assert row_to_ids({"instruction": "번역하세요", "input": "사과", "output": "좋습니다."}, tok)[:2] == with_input
    ids, mask, form = row_to_ids({"text": "사과를 샀습니다."}, tok)
    assert form == "text" and ids == [tok.bos_id] + tok.encode("사과를 샀습니다.") + [tok.eos_id] and all(mask)


def test_mask_prompt_puts_the_loss_on_the_answer_only(tok, tmp_path):
    prompt, answer = "어제 공원에서 책을 읽었습니다.", "네, 책을 읽었습니다."
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": prompt, "completion": answer}])
    x, y, _ = collate(SFTDataset(tmp_path / "train.jsonl", tok, 64, mask_prompt=True).examples)
    # The same sequence built by hand from its pieces; the answer is its content and <|im_end|>.
    head = [tok.bos_id, tok.im_start_id] + tok.encode("user\n") + tok.encode(prompt) + [tok.im_end_id] \
        + tok.encode("\n") + [tok.im_start_id] + tok.encode("assistant\n")
    body = tok.encode(answer) + [tok.im_end_id]
    ids = head + body + tok.encode("\n")
    assert x[0].tolist() == ids[:-1]
    answer_positions = range(len(head), len(head) + len(body))  # positions t whose token is learnt
    assert [t + 1 for t in range(len(ids) - 1) if y[0, t] != IGNORE_INDEX] == list(answer_positions)
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    with torch.no_grad():
        logits = model(x)[0].double()
        expected = torch.stack([-F.log_softmax(logits[t - 1], -1)[ids[t]] for t in answer_positions]).mean()
        assert float(model(x, y)) == pytest.approx(float(expected), rel=1e-5)
    unmasked = SFTDataset(tmp_path / "train.jsonl", tok, 64, mask_prompt=False).examples[0]
    assert unmasked.labels == ids[1:]


def test_long_rows_are_truncated_and_counted(tok, tmp_path):
    rows = [{"prompt": "짧은 질문", "completion": "짧은 답"}, {"prompt": "짧은 질문", "completion": "긴 답 " * 40},
            {"prompt": "긴 질문 " * 40, "completion": "답"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    ds = SFTDataset(tmp_path / "train.jsonl", tok, 48, mask_prompt=True)
    assert (ds.rows, ds.truncated, ds.dropped, len(ds)) == (3, 2, 1, 2)
    assert max(len(e.ids) - 1 for e in ds.examples) == 48
    assert "2 longer than --max-seq-length 48 (truncated)" in ds.summary() and "1 dropped" in ds.summary()


def test_batches_are_length_sorted_shuffled_and_resumable(tok, tmp_path):
    rows = [{"text": "가 " * n} for n in range(1, 41)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    ds = SFTDataset(tmp_path / "train.jsonl", tok, 64)
    batches = SFTBatches(ds, 4, seed=3)
    first_epoch = [next(batches) for _ in range(10)]
    for x, y in first_epoch:  # neighbours by length: little padding
        lengths = (y != IGNORE_INDEX).sum(1)
        assert int(lengths.max() - lengths.min()) <= 4 * 3
    assert sorted(int((y != IGNORE_INDEX).sum()) for _, y in first_epoch) != \
        [int((y != IGNORE_INDEX).sum()) for _, y in first_epoch]  # the order is shuffled
    batches.pop_tokens()
    state = batches.state_dict()
    ahead = [next(batches) for _ in range(7)]
    again = SFTBatches(ds, 4, seed=3)
    again.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(ahead, [next(again) for _ in range(7)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert batches.pop_tokens() == sum(int((x != 0).sum()) for x, _ in ahead)


@pytest.mark.parametrize("content,message", [
    ('{"text": "a"}\n{"text": "b"\n', r"train.jsonl:2: malformed JSON"),
    ('{"prompt": "질문"}\n', r"train.jsonl:1: a prompt/completion row needs both fields; 'completion' is missing"),
    ('{"instruction": "질문"}\n', r"train.jsonl:1: an instruction row needs 'instruction' and 'output'"),
    ('{"question": "q", "answer": "a"}\n', r"train.jsonl:1: the row has none of the supported forms"),
    ('{"messages": [{"role": "user"}]}\n', r"train.jsonl:1: message 0 must be a dict with 'role' and 'content'"),
    ('[1, 2]\n', r"train.jsonl:1: each line must be a JSON object"),
    ('\n\n', r"train.jsonl: no rows"),
])
def test_bad_rows_name_the_file_and_line(tok, tmp_path, content, message):
    (tmp_path / "train.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(SFTDataError, match=message):
        SFTDataset(tmp_path / "train.jsonl", tok, 64)


def test_missing_files_and_text_with_mask_prompt(tok, tmp_path):
    with pytest.raises(SFTDataError, match="no train.jsonl"):
        load_split(tmp_path, "train", tok, 64, False)
    write_jsonl(tmp_path / "train.jsonl", [{"text": "가나다"}])
    with pytest.raises(SFTDataError, match=r"train.jsonl:1: --mask-prompt needs rows with a prompt"):
        load_split(tmp_path, "train", tok, 64, True)
    with pytest.raises(SFTDataError, match="fewer than --batch-size 4"):
        SFTBatches(SFTDataset(tmp_path / "train.jsonl", tok, 64), 4)
    json.loads((tmp_path / "train.jsonl").read_text())  # the data file is left as it was
