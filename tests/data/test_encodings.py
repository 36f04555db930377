"""Input text in the encodings Korean files come in (CP949/EUC-KR, UTF-16 with and without BOM,
UTF-8 with BOM, Johab): found per file, decoded exactly in every reader, reported per file; a
file whose encoding cannot be told is refused by name and nothing is written."""
import bz2
import gzip
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kr_mini_llm.data import readers
from kr_mini_llm.data.encoding import SNIFF_BYTES, Decoder, EncodingError, sniff
from kr_mini_llm.data.pipeline import prepare_text
from kr_mini_llm.data.readers import BadInputFile, ReadStats, read_documents
from .conftest import OBJECTS, PLACES, SUBJECTS, TIMES, VERBS, korean_docs

QUIET = dict(log=lambda *a: None)
# how each encoding is written -> what it is found and reported as
FOUND = {"cp949": "cp949", "euc-kr": "cp949", "utf-16": "utf-16", "utf-16-le": "utf-16-le",
         "utf-16-be": "utf-16-be", "utf-8-sig": "utf-8-sig", "johab": "johab"}


def _write(path: Path, text: str, enc: str):
    data = text.encode(enc)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".bz2"):
        data = bz2.compress(data)
    elif path.name.endswith(".zst"):
        import zstandard
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def _jsonl(docs):
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs)


@pytest.mark.parametrize("enc", sorted(FOUND))
@pytest.mark.parametrize("name", ["a.txt", "a.jsonl", "a.txt.gz", "a.jsonl.zst", "wiki_00.bz2"])
def test_every_reader_decodes_every_encoding(tmp_path, enc, name):
    docs = korean_docs(4, seed=len(name))
    if name.startswith("wiki_"):            # wikiextractor's --json output, bz2-compressed
        text = _jsonl(docs)
    else:
        text = _jsonl(docs) if ".jsonl" in name else "\n\n".join(docs) + "\n"
    _write(tmp_path / name, text, enc)
    stats = ReadStats()
    got = [d.text for d in read_documents([tmp_path / name], stats=stats)]
    assert got == docs
    assert stats.encodings == {str(tmp_path / name): FOUND[enc]} and not stats.invalid_utf8
    assert f"{tmp_path / name}: decoded as {FOUND[enc]}" in stats.summary()


def test_html_page_in_cp949(tmp_path):
    doc = korean_docs(1, seed=3)[0]
    page = '<html><head><meta charset="euc-kr"></head><body>' + "".join(f"<p>{p}</p>" for p in doc.split("\n"))
    _write(tmp_path / "p.html", page + "</body></html>", "cp949")
    got = [d.text for d in read_documents([tmp_path / "p.html"])]
    assert [ln for ln in got[0].split("\n") if ln] == doc.split("\n")


def test_blocks_cut_anywhere_give_the_same_documents(tmp_path, monkeypatch):
    """Separators and multi-byte characters straddling read blocks; a document past the size limit."""
    docs = korean_docs(6, seed=7)
    seps = ["\n\n", "\n  \n", "\r\n\r\n", "\n\n\n\t\n"]
    text = docs[0] + "".join(seps[i % 4] + d for i, d in enumerate(docs[1:]))
    for enc in ("utf-8", "cp949", "utf-16"):
        _write(tmp_path / "a.txt", text, enc)
        for block in (5, 13, 1 << 20):
            monkeypatch.setattr(readers, "_BLOCK", block)
            got = [d.text.replace("\r", "") for d in read_documents([tmp_path / "a.txt"])]
            assert got == docs, (enc, block)
    monkeypatch.setattr(readers, "MAX_DOC_CHARS", 50)
    got = [d.text for d in read_documents([tmp_path / "a.txt"])]
    assert "".join(got).replace("\r", "").replace("\n", "") == "".join(docs).replace("\n", "")
    assert all(len(t) <= 50 + (1 << 20) for t in got) and len(got) > len(docs)


def test_random_bytes_are_refused_naming_the_file(tmp_path):
    p = tmp_path / "noise.txt"
    p.write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(BadInputFile, match="cannot tell its text encoding") as e:
        list(read_documents([p]))
    assert str(e.value).startswith(f"{p}: ") and "--encoding" in str(e.value)


def test_a_file_that_changes_encoding_is_refused(tmp_path):
    """UTF-8 at the start (what the encoding is found from), CP949 later: never half-used."""
    docs = korean_docs(400, seed=4)
    p = tmp_path / "mixed.txt"
    p.write_bytes("\n\n".join(docs[:200]).encode() + b"\n\n" + "\n\n".join(docs[200:]).encode("cp949"))
    assert p.stat().st_size > 2 * SNIFF_BYTES
    with pytest.raises(BadInputFile, match=r"mixed\.txt: not utf-8 text in bytes"):
        list(read_documents([p]))


def test_mixed_folder_uses_every_file(tmp_path):
    docs = korean_docs(40, seed=11)
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "a.txt", "\n\n".join(docs[:10]), "utf-8")
    _write(raw / "b.txt", "\n\n".join(docs[10:20]), "cp949")
    _write(raw / "c.txt", "\n\n".join(docs[20:30]), "utf-16")
    _write(raw / "d.jsonl", _jsonl(docs[30:]), "euc-kr")
    lines = []
    meta = prepare_text(inputs=[str(raw)], out_dir=tmp_path / "out", ratios=(0.8, 0.1, 0.1), log=lines.append)
    out = "".join((tmp_path / "out" / f"{s}.txt").read_text(encoding="utf-8") for s in ("train", "valid", "test"))
    assert all(d in out for d in docs)
    assert meta["read"]["encodings"] == {str(raw / "b.txt"): "cp949", str(raw / "c.txt"): "utf-16",
                                         str(raw / "d.jsonl"): "cp949"}
    log = "\n".join(lines)
    assert "3 files not in plain UTF-8 (cp949: 2, utf-16: 1)" in log
    assert f"{raw / 'c.txt'}: decoded as utf-16 (BOM)" in log and f"{raw / 'b.txt'}: decoded as cp949 (detected)" in log


def test_encoding_named_by_the_caller(tmp_path):
    docs = korean_docs(3, seed=2)
    p = tmp_path / "a.txt"
    _write(p, "\n\n".join(docs), "utf-16-le")
    stats = ReadStats()
    assert [d.text for d in read_documents([p], stats=stats, encoding="utf-16-le")] == docs
    assert f"{p}: decoded as utf-16-le (--encoding)" in stats.summary()
    with pytest.raises(BadInputFile, match=r"a\.txt: not cp949 text"):    # the wrong one is refused
        list(read_documents([p], encoding="cp949"))
    with pytest.raises(EncodingError, match="unknown encoding 'klingon'"):
        list(read_documents([p], encoding="klingon"))


def test_failed_prepare_leaves_nothing_it_created(tmp_path):
    noise = tmp_path / "noise.txt"
    noise.write_bytes(random.Random(1).randbytes(3000))
    with pytest.raises(BadInputFile):
        prepare_text(inputs=[str(noise)], out_dir=tmp_path / "new" / "processed", **QUIET)
    assert not (tmp_path / "new").exists()
    # an existing output stays as it was; no temporary file is left in it
    good = tmp_path / "ko.txt"
    good.write_text("\n\n".join(korean_docs(30, seed=5)), encoding="utf-8")
    out = tmp_path / "processed"
    prepare_text(inputs=[str(good)], out_dir=out, ratios=(0.8, 0.1, 0.1), **QUIET)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BadInputFile):
        prepare_text(inputs=[str(good), str(noise)], out_dir=out, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------ generated text
_WORDS = sorted({w for group in (SUBJECTS, PLACES, OBJECTS, VERBS, TIMES) for phrase in group for w in phrase.split()})
_HANGUL = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
_ASCII = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789.,!?()-'\""
_korean_word = st.one_of(st.sampled_from(_WORDS), st.text(alphabet=_HANGUL, min_size=1, max_size=2))
_ascii_word = st.text(alphabet=_ASCII, min_size=1, max_size=8)


@st.composite
def _korean_text(draw):
    """Korean words (the test corpus's, or any syllables), ASCII words, spaces and line breaks."""
    words = draw(st.lists(st.one_of(_korean_word, _korean_word, _ascii_word), min_size=40, max_size=150))
    assume(sum(any("\uac00" <= c <= "\ud7a3" for c in w) for w in words) >= 30)
    seps = draw(st.lists(st.sampled_from([" ", " ", " ", "\n", ", "]), min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps))


def _decode_in_pieces(data: bytes, enc: str, cuts) -> str:
    d = Decoder(enc)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return "".join(d.decode(data[a:b]) for a, b in zip(bounds, bounds[1:])) + d.decode(b"", final=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(text=_korean_text(), enc=st.sampled_from(sorted(FOUND)), cuts=st.lists(st.integers(0, 1 << 16), max_size=4))
def test_generated_text_round_trips_through_detection(text, enc, cuts):
    data = text.encode(enc)
    found, _ = sniff(data[:SNIFF_BYTES], complete=len(data) <= SNIFF_BYTES)
    assert _decode_in_pieces(data, found, cuts) == text


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet=_HANGUL + _ASCII + " \n"), enc=st.sampled_from(sorted(FOUND)),
       cuts=st.lists(st.integers(0, 1 << 16), max_size=4))
def test_any_text_round_trips_with_the_encoding_named(text, enc, cuts):
    assert _decode_in_pieces(text.encode(enc), enc, cuts) == text


# ------------------------------------------------------------------ the commands
def _run(main, *args, capsys):
    """A command's main() in this process (no interpreter start): (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_cp949_corpus_prepares_and_trains_a_korean_vocabulary(tmp_path, monkeypatch, capsys):
    from kr_mini_llm.cli import prepare, tokenizer
    from kr_mini_llm.data.tokenizer import Tokenizer
    monkeypatch.chdir(tmp_path)
    docs = korean_docs(200, seed=8)
    (tmp_path / "ko.txt").write_bytes("\n\n".join(docs).encode("cp949"))
    rc, out, err = _run(prepare.main, "--input", "ko.txt", "--output_dir", "out", "--num_proc", 1, capsys=capsys)
    assert rc == 0, err
    assert "ko.txt: decoded as cp949 (detected)" in out
    written = "".join((tmp_path / "out" / f"{s}.txt").read_text(encoding="utf-8") for s in ("train", "valid", "test"))
    assert all(d in written for d in docs)
    # the tokenizer decodes the CP949 file too: its pieces are Hangul, not replacement characters
    rc, out, err = _run(tokenizer.main, "--input", "ko.txt", "--vocab_size", 500, "--output", "tok", "--valid", "ko.txt",
                        "--num_threads", 1, capsys=capsys)
    assert rc == 0, err
    assert "decoded as cp949" in out and "chars/token" in out
    tok = Tokenizer(tmp_path / "tok.model")
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert not any("\ufffd" in p for p in pieces) and sum(any("가" <= c <= "힣" for c in p) for p in pieces) > 100


def test_cli_undecodable_file_is_an_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from kr_mini_llm.cli import prepare, tokenizer
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noise.txt").write_bytes(random.Random(2).randbytes(4000))
    rc, out, err = _run(prepare.main, "--input", "noise.txt", "--output_dir", "data/processed", capsys=capsys)
    assert rc == 2 and err.startswith("error: noise.txt: cannot tell its text encoding")
    assert not (tmp_path / "data").exists()
    rc, out, err = _run(tokenizer.main, "--input", "noise.txt", "--vocab_size", 300, "--output", "tok", capsys=capsys)
    assert rc == 2 and err.startswith("error: noise.txt: cannot tell its text encoding")
    assert not (tmp_path / "tok.model").exists()
    with pytest.raises(SystemExit) as e:
        prepare.main(["--input", "noise.txt", "--encoding", "klingon"])
    assert e.value.code == 2 and "unknown encoding 'klingon'" in capsys.readouterr().err
    # a bad --tokenizer is found before the text stage writes anything
    (tmp_path / "ko.txt").write_text("\n\n".join(korean_docs(20)), encoding="utf-8")
    rc, out, err = _run(prepare.main, "--input", "ko.txt", "--tokenizer", "none.model", "--output_dir", "p", capsys=capsys)
    assert rc == 2 and "tokenizer model not found" in err and not (tmp_path / "p").exists()


def test_a_lone_surrogate_escape_in_jsonl_is_dropped_like_other_invalid_characters(tmp_path):
    docs = korean_docs(30, seed=5)
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [json.dumps({"text": t}) for t in docs]   # ASCII escapes, as many JSON writers produce
    lines[3] = lines[3][:-2] + '\\ud800 끝"}'          # valid JSON, but no UTF-8 text
    (raw / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_text(inputs=[str(raw)], out_dir=tmp_path / "out", ratios=(0.8, 0.1, 0.1), **QUIET)
    out = "".join((tmp_path / "out" / f"{s}.txt").read_text(encoding="utf-8") for s in ("train", "valid", "test"))
    assert f"{docs[3]} 끝" in out and all(d in out for d in docs)   # cleaning drops U+FFFD
