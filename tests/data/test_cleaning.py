import unicodedata

import pytest

from kr_mini_llm.data.cleaning import (CleanConfig, CleanStats, EmptyCorpusError, clean_documents, exact_dedup,
                                       filter_lines, hangul_ratio, near_dedup, normalize_text, strip_html,
                                       strip_wikitext)
from .conftest import korean_docs


def test_strip_html_drops_script_style_nav_and_keeps_paragraphs():
    html = ("<html><head><title>제목</title><style>.a{}</style></head><body><nav>메뉴</nav>"
            "<script>alert('스크립트')</script><h1>첫째 &amp; 둘째</h1><p>문단 <b>하나</b>입니다.</p><p>문단 둘</p></body></html>")
    text = strip_html(html)
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    assert lines == ["첫째 & 둘째", "문단 하나입니다.", "문단 둘"]


def test_strip_wikitext():
    wiki = ("{{정보상자 도시|이름=서울|인구={{formatnum:9700000}}}}'''서울'''은 [[대한민국]]의 [[수도 (도시)|수도]]이다."
            "<ref>출처</ref>\n== 역사 ==\n[[파일:Seoul.jpg|섬네일|서울 [[야경]]]]\n* 조선의 [https://example.org 한양]\n"
            "{| class=wikitable\n| 표 |}\n<!-- 주석 -->[[분류:도시]]")
    text = strip_wikitext(wiki)
    assert "서울은 대한민국의 수도이다." in text
    assert "역사" in text.split("\n")
    assert "조선의 한양" in text
    for junk in ("{{", "}}", "[[", "]]", "'''", "출처", "섬네일", "표", "주석", "분류", "formatnum"):
        assert junk not in text, junk


def test_normalize_nfc_controls_whitespace():
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert len(decomposed) > 3
    text = f"  {decomposed}\u00a0\u00a0문장\t\t입니다\x00\x07\u200b\ufffd  \r\n\r\n\n  둘째\u3000줄  \n"
    out = normalize_text(text)
    assert out == "한국어 문장 입니다\n둘째 줄"
    assert unicodedata.is_normalized("NFC", out)


def test_hangul_ratio_and_line_filter():
    assert hangul_ratio("한국어 문장") == 1.0
    assert hangul_ratio("English only") == 0.0
    assert hangul_ratio("12345 !!") == 0.0
    assert hangul_ratio("LibreOffice 도움말") == pytest.approx(3 / 14)
    text = "짧다\n이 줄은 한국어 문장입니다.\nThis line is English text only.\nLibreOffice의 도구 메뉴를 엽니다."
    assert filter_lines(text, min_line_chars=5, min_hangul_ratio=0.3).split("\n") == [
        "이 줄은 한국어 문장입니다.", "LibreOffice의 도구 메뉴를 엽니다."]
    assert filter_lines(text, min_line_chars=5, min_hangul_ratio=0.5).split("\n") == ["이 줄은 한국어 문장입니다."]
    assert len(filter_lines(text, min_line_chars=1, min_hangul_ratio=0).split("\n")) == 4


def test_exact_dedup_keeps_first_occurrence_order():
    assert exact_dedup(["가나다", "라마바", "가나다", "사아자", "라마바"]) == ["가나다", "라마바", "사아자"]


def test_near_dedup_removes_near_copies_keeps_distinct():
    docs = korean_docs(20, seed=5, paragraphs=4)
    near = docs[3].replace(docs[3][10:14], "바꾼말", 1)
    assert near != docs[3]
    out = near_dedup(docs + [near, docs[7] + " 덧붙임."])
    assert out == docs
    assert near_dedup(docs, threshold=1.01) == docs  # unreachable threshold keeps everything


def test_clean_documents_steps_and_stats():
    docs = korean_docs(30, seed=6)
    english = "Only English words here, nothing Korean at all in this line.\n" * 3
    near = docs[2][:-3] + "다른말."
    stats = CleanStats()
    out = clean_documents(docs + [english, docs[0], near, "한글", ""], CleanConfig(), stats)
    assert out == docs
    names = [s[0] for s in stats.steps]
    assert names[0].startswith("input") and "exact dedup" in names and any(n.startswith("near dedup") for n in names)
    counts = [s[1] for s in stats.steps]
    assert counts == sorted(counts, reverse=True) and counts[0] == len(docs) + 5 and counts[-1] == len(docs)
    assert "docs" in stats.table()


def test_clean_documents_empty_result_is_clear_error():
    with pytest.raises(EmptyCorpusError, match="no text left after 'lines >= 5 chars, hangul >= 0.3'.*--min_hangul_ratio"):
        clean_documents(["English only text in this document.\nAnother English line here."])
    with pytest.raises(EmptyCorpusError, match="no documents"):
        clean_documents([])


def test_vectorised_steps_match_the_per_line_reference():
    """normalize_text and filter_lines (regex tricks, numpy prefix sums) against the plain
    per-line, per-character versions, on random mixes of Hangul, Latin, spaces and symbols."""
    import random
    from . import reference_pipeline as ref
    rng = random.Random(0)
    chars = list("가나다힣abcXYZ 1234·…「」ㄱㅏé") + ["\u1100", "\u3130", "\u318f", "\U0001d49c", "😀", "\u2028", "½",
                                                  "①", "\t", "\u3000", "\u00a0", "\r", "\n", "  ", "\x0b", "\u200b", "\ufffd"]
    for _ in range(2000):
        t = "".join(rng.choice(chars) for _ in range(rng.randint(0, 40)))
        assert normalize_text(t) == ref.normalize_text(t), repr(t)
        for m, r in ((5, 0.3), (0, 0.0), (3, 0.5), (1, 1.0)):
            assert filter_lines(t, m, r) == ref.filter_lines(t, m, r), (repr(t), m, r)
