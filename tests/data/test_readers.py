import bz2
import json

import pytest

from kr_mini_llm.data.readers import InputError, ReadStats, expand_inputs, read_documents
from .conftest import korean_docs


def _texts(inputs, **kw):
    stats = ReadStats()
    return [d.text for d in read_documents(inputs, stats=stats, **kw)], stats


def test_txt_blank_line_documents_dir_and_glob(tmp_path):
    docs = korean_docs(5, seed=1)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:3]) + "\n", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("\n\n\n".join(docs[3:]), encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    by_dir, st = _texts([tmp_path])
    assert sorted(by_dir) == sorted(docs) and st.files == 2
    by_glob, _ = _texts([str(tmp_path / "*.txt")])
    assert by_glob == docs[:3]
    # the same file named twice is read once
    twice, _ = _texts([tmp_path / "a.txt", str(tmp_path / "a.*")])
    assert twice == docs[:3]


def test_jsonl_text_field_and_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"body": t, "n": i}, ensure_ascii=False) for i, t in enumerate(["가나다", "라마바"])),
                 encoding="utf-8")
    assert _texts([p], text_field="body")[0] == ["가나다", "라마바"]
    with pytest.raises(ValueError, match=r"c.jsonl:1: no 'text' field \(found \['body', 'n'\]\); pass --text_field"):
        _texts([p])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋음"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        _texts([bad])


def test_wikiextractor_json_and_plain(tmp_path):
    d = tmp_path / "extracted" / "AA"
    d.mkdir(parents=True)
    (d / "wiki_00").write_text(json.dumps({"id": "1", "title": "서울", "text": "서울\n\n서울은 수도이다."}, ensure_ascii=False)
                               + "\n", encoding="utf-8")
    (d / "wiki_01").write_text('<doc id="2" title="부산">\n부산\n\n부산은 항구 도시이다.\n</doc>\n'
                               '<doc id="3" title="대구">\n대구\n대구는 내륙 도시이다.\n</doc>\n', encoding="utf-8")
    texts, _ = _texts([tmp_path / "extracted"])
    assert texts[0] == "서울\n\n서울은 수도이다."
    assert [t.strip() for t in texts[1:]] == ["부산은 항구 도시이다.", "대구는 내륙 도시이다."]


def test_wikipedia_xml_bz2_dump(tmp_path):
    xml = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="ko">
  <page><title>서울</title><ns>0</ns><id>1</id><revision><text>'''서울'''은 [[대한민국]]의 수도이다.{{각주}}</text></revision></page>
  <page><title>틀:각주</title><ns>10</ns><id>2</id><revision><text>틀 내용은 문서가 아니다</text></revision></page>
  <page><title>한양</title><ns>0</ns><id>3</id><redirect title="서울" /><revision><text>#넘겨주기 [[서울]]</text></revision></page>
  <page><title>부산</title><ns>0</ns><id>4</id><revision><text>부산은 [[항구|항구 도시]]이다.</text></revision></page>
</mediawiki>"""
    p = tmp_path / "kowiki-pages-articles.xml.bz2"
    p.write_bytes(bz2.compress(xml.encode("utf-8")))
    texts, _ = _texts([p])
    assert [t.strip() for t in texts] == ["서울은 대한민국의 수도이다.", "부산은 항구 도시이다."]


def test_invalid_utf8_counted_not_fatal_and_empty_files(junk_corpus_dir):
    d, _ = junk_corpus_dir
    texts, st = _texts([d])
    assert st.invalid_utf8 >= 1 and any(f.endswith("d.txt") for f in st.files_with_invalid_utf8)
    assert st.empty_files == 1
    assert "invalid UTF-8" in st.summary()
    assert any("\ufffd" in t for t in texts)   # replaced here; the cleaner removes it


def test_bad_input_paths_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=r"--input '.*nope\.txt': no such file, directory or glob match"):
        expand_inputs([tmp_path / "nope.txt"])
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="holds no readable files"):
        expand_inputs([tmp_path / "emptydir"])
    with pytest.raises(InputError, match="no such file"):
        list(read_documents(str(tmp_path / "*.jsonl")))


# ------------------------------------------------------------ compressed, Parquet, dumps
_WIKI_HEAD = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" xml:lang="ko">\n'
_PAGE = "  <page><title>{t}</title><ns>0</ns><id>{i}</id><revision><text>{body}</text></revision></page>\n"


def test_compressed_text_and_jsonl(tmp_path):
    import gzip
    import zstandard
    docs = korean_docs(4, seed=3)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("\n\n".join(docs[:2]).encode()))
    lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs[2:])
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    texts, st = _texts([tmp_path])
    assert texts == docs[:2] + docs[2:] + docs[2:] and st.files == 3


def test_parquet_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = korean_docs(3, seed=4)
    pq.write_table(pa.table({"id": [1, 2, 3], "content": docs}), tmp_path / "d.parquet", row_group_size=2)
    assert _texts([tmp_path / "d.parquet"], text_field="content")[0] == docs
    with pytest.raises(ValueError, match=r"d.parquet: no 'text' column \(found \['id', 'content'\]\)"):
        _texts([tmp_path / "d.parquet"])


def test_wikipedia_multistream_dump(tmp_path):
    """A multistream dump is many bz2 streams back to back (header, 100 pages each, footer)."""
    pages = [_PAGE.format(t=f"문서{i}", i=i, body=f"'''문서{i}'''는 [[서울|수도]]에 관한 글이다.") for i in range(5)]
    streams = [_WIKI_HEAD, "".join(pages[:2]), "".join(pages[2:]), "</mediawiki>\n"]
    p = tmp_path / "kowiki-20240101-pages-articles-multistream.xml.bz2"
    p.write_bytes(b"".join(bz2.compress(s.encode()) for s in streams))
    texts, _ = _texts([p])
    assert texts == [f"문서{i}는 수도에 관한 글이다." for i in range(5)]


@pytest.mark.parametrize("name, content, message", [
    ("bad.xml.bz2", b"this is not bzip2 at all" * 10, "not a valid bz2 archive"),
    ("cut.xml.bz2", None, "truncated"),
    ("rss.xml", b'<rss version="2.0"><channel><item><title>t</title><text>\xea\xb0\x80\xeb\x82\x98\xeb\x8b\xa4 '
                b'\xeb\x9d\xbc\xeb\xa7\x88\xeb\xb0\x94</text></item></channel></rss>', r"not a MediaWiki XML dump \(root element <rss>"),
    ("broken.xml", _WIKI_HEAD.encode() + b"<page><title>x</title><ns>0", "not well-formed XML"),
    ("bad.jsonl.gz", b'{"text": "plain JSON, not gzip"}', "not a valid gzip archive"),
    ("bad.jsonl.zst", b"\x28\xb5\x2f\xfdgarbage", "not a valid zstd archive"),
    ("bad.parquet", b"PAR1 not parquet PAR1", "not a readable Parquet file"),
    ("bad.txt.gz", b"plain text, not gzip", "not a valid gzip archive"),
    ("wiki_00.bz2", b"wikiextractor output that is not bzip2", "not a valid bz2 archive"),
])
def test_broken_files_are_clear_errors_naming_the_file(tmp_path, name, content, message):
    from kr_mini_llm.data.readers import BadInputFile
    p = tmp_path / name
    if content is None:         # a real dump cut in the middle
        body = "\n".join(korean_docs(50, seed=9))
        full = bz2.compress((_WIKI_HEAD + _PAGE.format(t="가", i=1, body=body) + "</mediawiki>").encode())
        content = full[:len(full) // 2]
    p.write_bytes(content)
    with pytest.raises(BadInputFile, match=message) as e:
        _texts([p])
    assert str(p) in str(e.value)


def test_cli_broken_dump_is_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    p = tmp_path / "kowiki.xml.bz2"
    body = "\n".join(korean_docs(50, seed=9))
    full = bz2.compress((_WIKI_HEAD + _PAGE.format(t="가", i=1, body=body) + "</mediawiki>").encode())
    p.write_bytes(full[:len(full) // 2])
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "prepare_data.py"),
                        "--input", str(p), "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {p}: the archive is truncated")
    assert not list((tmp_path / "out").glob("*.txt*"))          # nothing half-written
