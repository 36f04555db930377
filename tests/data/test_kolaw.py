"""The out-of-domain set from konlpy's wheel: read from a fake wheel built here (no network), the
checksum refusal, the cleaning, and the licence file written beside the text."""
import hashlib
import zipfile

import pytest

from kr_mini_llm.data import kolaw
from kr_mini_llm.data.kolaw import KolawUnavailable, obtain_kolaw
from kr_mini_llm.data.pipeline import DOC_SEPARATOR
from kr_mini_llm.data.sources import SourceUnavailable

ARTICLE = "제{n}조 국가는 모든 국민의 인간다운 생활을 보장하기 위하여 필요한 정책을 수립하고 이를 성실하게 시행하여야 한다."
CONSTITUTION = "\r\n".join([
    "대한민국헌법", "",
    "유구한 역사와 전통에 빛나는 우리 대한국민은 자유와 평화를 사랑하며 모든 영역에서 기회를 균등히 하고 "
    "책임과 의무를 완수하여 항구적인 세계평화와 인류공영에 이바지할 것을 다짐한다.", "",
    "       제1장 총강", *[ARTICLE.format(n=n) for n in (1, 2)], "",
    "       제2장 국민의 권리와 의무", *[ARTICLE.format(n=n) for n in (3, 4)],
    " 펼침  부칙 <헌법 제10호, 1987.10.29.>  부칙보기", "", ARTICLE.format(n=1) + " 이 헌법은 공포한 날부터 시행한다.",
])
BILL = ("지방공무원법 일부개정법률안\n\n- 1 -\n\n\x0c제안이유 및 주요내용\n\n----------------------------\n\n"
        "공무원이 자녀를 양육하기 위하여 육아휴직을 할 수 있는 자녀의 나이를 만 8세 이하로 넓혀 "
        "초등학교 저학년 자녀를 둔 부모가 일자리를 그만두지 않도록 하려는 것임.\n")
# Under the corpus's 100 characters once cleaned: dropped, like any such document.
SHORT_BILL = ("행정절차법 일부개정법률안\n\n행정청이 처분의 사전통지를 할 때에는 당사자가 의견을 충분히 "
              "낼 수 있도록 기간을 열흘 이상으로 정하고 그 이유를 함께 알리도록 하려는 것임.\n")


def fake_wheel(path, constitution=CONSTITUTION, bills=(BILL, SHORT_BILL)):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(kolaw.CONSTITUTION, constitution.encode("utf-8"))
        for i, bill in enumerate(bills):
            zf.writestr(f"{kolaw.BILLS}18098{i:02d}.txt", bill.encode("utf-8"))
        zf.writestr("konlpy/__init__.py", "raise ImportError('never imported')\n")
        zf.writestr(kolaw.LICENCE, "GNU General Public License v3 (the package's code)\n")
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_set_is_read_from_the_wheel_cleaned_and_licensed(tmp_path):
    cache = tmp_path / "raw" / "wheels"
    cache.mkdir(parents=True)
    wheel = fake_wheel(cache / kolaw.WHEEL)
    out = tmp_path / "eval" / "ood_kolaw.txt"
    assert obtain_kolaw(out, cache, download=False, sha256=sha256(wheel), log=lambda *a: None) == out
    docs = out.read_text(encoding="utf-8").rstrip("\n").split(DOC_SEPARATOR)
    # Preamble, two chapters, the addenda, then the bills in file order: one document each.
    assert [d.split("\n")[0] for d in docs] == ["대한민국헌법", "제1장 총강", "제2장 국민의 권리와 의무",
                                                "펼침 부칙 <헌법 제10호, 1987.10.29.> 부칙보기",
                                                "지방공무원법 일부개정법률안"]
    # The corpus's cleaning: no CR, form feed, page numbers or rules of dashes; lines kept whole.
    text = "\n".join(docs)
    assert "\r" not in text and "\x0c" not in text and "- 1 -" not in text and "-----" not in text
    assert ARTICLE.format(n=3) in docs[2].split("\n")
    licence = out.with_suffix(".copyright").read_text(encoding="utf-8")
    assert "article 7" in licence and "저작권법 제7조" in licence and kolaw.WHEEL in licence
    assert "GNU General Public License v3" in licence and "5 documents" in licence
    # Made once: a second call reads nothing (the wheel may even be gone).
    wheel.unlink()
    before = out.stat().st_mtime_ns
    obtain_kolaw(out, cache, download=False, log=lambda *a: None)
    assert out.stat().st_mtime_ns == before


def test_a_wheel_that_fails_its_checksum_is_refused(tmp_path):
    cache = tmp_path / "wheels"
    cache.mkdir()
    fake_wheel(cache / kolaw.WHEEL)   # not the pinned wheel's bytes
    out = tmp_path / "ood_kolaw.txt"
    with pytest.raises(KolawUnavailable, match=rf"sha256 [0-9a-f]{{64}}, expected {kolaw.WHEEL_SHA256}.*refusing"):
        obtain_kolaw(out, cache, download=False)
    assert not out.exists() and not out.with_suffix(".copyright").exists()
    assert issubclass(KolawUnavailable, SourceUnavailable)


def test_missing_wheel_and_bad_wheels_are_named(tmp_path):
    out = tmp_path / "ood_kolaw.txt"
    with pytest.raises(KolawUnavailable, match="is not there to make it from"):
        obtain_kolaw(out, tmp_path / "empty", download=False)
    not_zip = tmp_path / "not.whl"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(KolawUnavailable, match="not a readable wheel"):
        obtain_kolaw(out, tmp_path, wheel=not_zip, sha256=sha256(not_zip))
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(KolawUnavailable, match="not a konlpy 0.6.0 wheel"):
        obtain_kolaw(out, tmp_path, wheel=other, sha256=sha256(other))
    assert not out.exists()


def test_no_network_gives_a_message_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")       # pip may not reach any index...
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))   # ...nor find the wheel anywhere else
    with pytest.raises(KolawUnavailable, match=r"(?s)pip download --no-deps konlpy==0.6.0` failed.*copy it into"):
        obtain_kolaw(tmp_path / "ood_kolaw.txt", tmp_path / "wheels", log=lambda *a: None)


@pytest.mark.network
def test_the_pinned_wheel_gives_the_documented_set(tmp_path):
    """pip-downloads the real wheel (19 MB, from pip's cache after the first time): its checksum
    matches the pin, and the set is the one docs/data.md describes."""
    out = obtain_kolaw(tmp_path / "eval" / "ood_kolaw.txt", tmp_path / "wheels", log=lambda *a: None)
    docs = out.read_text(encoding="utf-8").rstrip("\n").split(DOC_SEPARATOR)
    assert len(docs) == 21 and sum(map(len, docs)) == 51_296
    assert docs[0].startswith("대한민국헌법\n유구한 역사와 전통에") and docs[1].startswith("제1장 총강\n제1조")
    assert (tmp_path / "wheels" / kolaw.WHEEL).is_file()
