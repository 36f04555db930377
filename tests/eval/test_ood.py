"""scripts/evaluate.py's out-of-domain row: a named text, the default set beside the token shards,
and a clear message (not a failure) when the default set cannot be made."""
import json
import math
import shutil

import pytest

from kr_mini_llm.cli.evaluate import main as evaluate
from kr_mini_llm.data import kolaw
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.eval import EvalError
from kr_mini_llm.eval.test_split import split_documents
from tests.data.conftest import korean_docs


def _report(tmp_path, *args):
    out = tmp_path / "report"
    assert evaluate(["--no_speed", "--max_new_tokens", "2", "--output", str(out), *map(str, args)]) == 0
    return json.loads(out.with_suffix(".json").read_text(encoding="utf-8")), out.with_suffix(".md").read_text()


def _data_folder(tmp_path, tokens):
    """A data folder laid out as data/: tokens/ (copied), and eval/ and raw/ for the set."""
    data = tmp_path / "data"
    shutil.copytree(tokens, data / "tokens")
    return data


def test_named_ood_text_is_reported_beside_the_test_split(eval_checkpoint, token_data, tmp_path):
    tokens, tok_path = token_data
    ood = tmp_path / "ood.txt"
    docs = korean_docs(5, seed=99)
    ood.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    report, md = _report(tmp_path, "--model", eval_checkpoint, "--tokens", tokens, "--ood", ood)
    (m,) = report["models"]
    assert report["ood_set"]["text"] == str(ood)
    o = m["ood"]
    tok = Tokenizer(tok_path)
    # every document's bytes and tokens (content + </s>, never <s>), counted independently
    assert o["bytes"] == sum(len(d.encode("utf-8")) for d in split_documents(ood.read_text(encoding="utf-8")))
    assert o["tokens"] == sum(len(x) + 1 for x in tok.encode(docs))
    assert o["bits_per_byte"] == pytest.approx(o["loss"] * o["tokens"] / math.log(2) / o["bytes"], rel=1e-9)
    assert o["perplexity"] == pytest.approx(math.exp(o["loss"]))
    assert o["tokenizer"]["chars"] == sum(map(len, docs)) and 0 < o["tokenizer"]["chars_per_token"]
    assert o["bits_per_byte"] != m["test"]["bits_per_byte"]
    # the markdown: one row for the test split and one for the out-of-domain text, per model
    rows = [line for line in md.splitlines() if line.startswith(f"| {eval_checkpoint} |")]
    test_row = next(r for r in rows if "test split (in-domain)" in r)
    ood_row = next(r for r in rows if "out-of-domain: ood.txt" in r)
    assert f"{m['test']['bits_per_byte']:.4f}" in test_row and f"{o['bits_per_byte']:.4f}" in ood_row
    assert f"{o['perplexity']:.2f}" in ood_row


def test_the_default_set_is_read_from_the_data_folder(eval_checkpoint, token_data, tmp_path):
    tokens, _ = token_data
    data = _data_folder(tmp_path, tokens)
    text, _ = kolaw.default_paths(data)
    text.parent.mkdir(parents=True)
    text.write_text("\n\n".join(korean_docs(3, seed=7)) + "\n", encoding="utf-8")
    text.with_suffix(".copyright").write_text("licence", encoding="utf-8")
    report, md = _report(tmp_path, "--model", eval_checkpoint, "--tokens", data / "tokens")
    assert report["ood_set"]["text"] == str(text) and report["models"][0]["ood"]["tokens"] > 0
    assert "out-of-domain: ood_kolaw.txt" in md


def test_a_default_set_that_cannot_be_made_is_a_message_not_a_failure(eval_checkpoint, token_data, tmp_path,
                                                                         monkeypatch, capsys):
    tokens, _ = token_data
    data = _data_folder(tmp_path, tokens)
    _, cache = kolaw.default_paths(data)
    cache.mkdir(parents=True)
    (cache / kolaw.WHEEL).write_bytes(b"PK\x05\x06" + bytes(18))   # an empty zip: fails the checksum
    report, md = _report(tmp_path, "--model", eval_checkpoint, "--tokens", data / "tokens")
    out = capsys.readouterr().out
    assert "out-of-domain set not evaluated" in out and "refusing to use it" in out and "--ood FILE" in out
    assert report["ood_set"]["text"] is None and "sha256" in report["ood_set"]["note"]
    assert "ood" not in report["models"][0] and "test" in report["models"][0]
    assert "Out-of-domain text: out-of-domain set not evaluated" in md
    # no wheel and no index for pip: the same, after one quick try
    (cache / kolaw.WHEEL).unlink()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    report, _ = _report(tmp_path / "again", "--model", eval_checkpoint, "--tokens", data / "tokens")
    assert report["ood_set"]["text"] is None and "pip download" in report["ood_set"]["note"]
    # --no_ood: not even tried
    report, _ = _report(tmp_path / "none", "--model", eval_checkpoint, "--tokens", data / "tokens", "--no_ood")
    assert report["ood_set"] is None


def test_a_named_ood_text_must_exist_and_hold_text(eval_checkpoint, token_data, tmp_path, capsys):
    from kr_mini_llm.eval.ood import locate_ood

    tokens, _ = token_data
    with pytest.raises(EvalError, match="--ood .*nope.txt' not found"):
        locate_ood(tmp_path / "nope.txt", tokens)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(EvalError, match="holds no text"):
        locate_ood(empty, tokens)
    cp949 = tmp_path / "cp949.txt"
    cp949.write_bytes("헌법".encode("cp949"))
    with pytest.raises(EvalError, match="not UTF-8"):
        locate_ood(cp949, tokens)
    assert evaluate(["--model", str(eval_checkpoint), "--tokens", str(tokens), "--ood", str(empty),
                     "--output", str(tmp_path / "r"), "--no_speed"]) == 2
    assert "holds no text" in capsys.readouterr().err and not list(tmp_path.glob("r.*"))
