"""Morpheme-aware tokenizer training (data/morphemes.py, train_tokenizer(pretokenize="kiwi"))."""
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from kr_mini_llm.data.morphemes import DELIMITER, check_pretokenize, kiwi_spans, mark, mark_lines
from kr_mini_llm.data.tokenizer import Tokenizer, train_tokenizer
from kr_mini_llm.errors import KrMiniLlmError

from .conftest import korean_docs

_LINE = st.text(st.sampled_from(list("대한민국의 수도는서울이다 .ab가\t")), max_size=30)


@st.composite
def _line_and_spans(draw):
    line = draw(_LINE)
    n = len(line)
    spans = draw(st.lists(st.tuples(st.integers(0, max(n, 1)), st.integers(0, 4)), max_size=12))
    return line, sorted(spans)


@settings(max_examples=300, deadline=None)
@given(_line_and_spans())
def test_mark_only_inserts_delimiters_inside_words(case):
    line, spans = case
    out = mark(line, spans)
    assert out.replace(DELIMITER, "") == line
    for i, ch in enumerate(out):
        if ch == DELIMITER:
            assert 0 < i < len(out) - 1                       # never at an end
            assert not out[i - 1].isspace() and not out[i + 1].isspace() and out[i + 1] != DELIMITER
    # a cut lies at a span's start that no earlier span overlaps
    cuts, k = [], 0
    for ch in out:
        if ch == DELIMITER:
            cuts.append(k)
        else:
            k += 1
    assert cuts == sorted(set(cuts))
    for c in cuts:
        assert c in {s for s, n in spans if n > 0}
        assert all(s + n <= c for s, n in spans if s < c)


def test_mark_leaves_contractions_whole():
    # 가진다 = 가지 (38, 2) + ㄴ다 (39, 2): the ending shares 진, no clean split
    assert mark("가진다", [(0, 2), (1, 2)]) == "가진다"
    assert mark("대한민국의 수도는", [(0, 4), (4, 1), (6, 2), (8, 1)]) == f"대한민국{DELIMITER}의 수도{DELIMITER}는"


def test_kiwi_marks_particles_and_endings():
    spans_of = kiwi_spans(1)
    lines = ["대한민국의 수도는 서울이다.", "", "  "]
    out = list(mark_lines(lines, spans_of, batch=2))
    assert out[0].replace(DELIMITER, "") == lines[0] and out[1:] == lines[1:]
    assert out[0].startswith(f"대한민국{DELIMITER}의 수도{DELIMITER}는 ")


def test_pretokenize_names_are_checked(tmp_path, korean_corpus_file):
    with pytest.raises(KrMiniLlmError, match="pretokenize must be one of none, kiwi, got 'mecab'"):
        check_pretokenize("mecab")
    with pytest.raises(KrMiniLlmError, match="pretokenize must be one of"):
        train_tokenizer([korean_corpus_file], 400, tmp_path / "t", pretokenize="mecab")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def kiwi_pair(tmp_path_factory):
    """A plain and a Kiwi-trained BPE on a corpus where one word-with-particle repeats."""
    d = tmp_path_factory.mktemp("kiwi")
    corpus = d / "corpus.txt"
    lines = korean_docs(60, seed=5) + ["대한민국의 수도는 서울이다. 대한민국의 국기는 태극기이다."] * 200
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain = Tokenizer(train_tokenizer([corpus], 500, d / "plain", num_threads=1, log_level=2))
    kiwi = Tokenizer(train_tokenizer([corpus], 500, d / "kiwi", num_threads=1, log_level=2, pretokenize="kiwi"))
    return plain, kiwi


def _pieces(t):
    return {t.id_to_piece(i) for i in range(t.vocab_size)}


def test_kiwi_pieces_stay_inside_morphemes(kiwi_pair):
    plain, kiwi = kiwi_pair
    assert not any(DELIMITER in p for p in _pieces(kiwi))
    # plain BPE learns the word with its particle; the Kiwi-trained one keeps 의 apart
    assert "대한민국의" in _pieces(plain) or "국의" in _pieces(plain)
    assert not {"대한민국의", "국의", "민국의", "▁대한민국의"} & _pieces(kiwi)
    assert kiwi.encode("대한민국의")[-1] == kiwi.piece_to_id("의")
    assert (kiwi.bos_id, kiwi.eos_id, kiwi.im_start_id, kiwi.im_end_id) == (2, 3, 4, 5)


_PIECES = st.sampled_from(["대한민국의 수도는", "ᄒ", "ᅡ", "ᆫ", "龍", "😀", "\u0301", "\t", " ", "\u2581", DELIMITER,
                           "<|im_start|>", "<|im_end|>", "<0x41>", "\ufeff"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(st.characters(exclude_categories=("Cs",)), max_size=5)),
                max_size=10).map("".join))
def test_kiwi_tokenizer_round_trips_any_string(kiwi_pair, s):
    _, t = kiwi_pair
    nfc, nfd = unicodedata.normalize("NFC", s), unicodedata.normalize("NFD", s)
    ids = t.encode(s)
    assert ids == t.encode(nfd) and t.decode(ids) == nfc and t.unk_id not in ids
    as_text = t.encode(s, special_tokens=False)
    assert t.decode(as_text) == nfc and t.im_start_id not in as_text


def test_train_tokenizer_cli_pretokenize(tmp_path, korean_corpus_file, capsys):
    from kr_mini_llm.cli.tokenizer import main

    out = tmp_path / "tok"
    assert main(["--input", str(korean_corpus_file), "--vocab_size", "400", "--output", str(out),
                 "--pretokenize", "kiwi", "--num_threads", "1"]) == 0
    assert "bpe, kiwi pre-tokenization, vocab 400" in capsys.readouterr().out
    assert not any(DELIMITER in p for p in _pieces(Tokenizer(str(out) + ".model")))


def test_kiwi_missing_is_one_clear_error_and_writes_nothing(tmp_path, korean_corpus_file, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kiwipiepy", None)   # as if not installed: the import fails
    with pytest.raises(KrMiniLlmError, match=r"needs the Korean morpheme analyser kiwipiepy.*pip install"):
        train_tokenizer([korean_corpus_file], 400, tmp_path / "out" / "tok", pretokenize="kiwi", num_threads=1)
    assert not any((tmp_path / "out").iterdir())
