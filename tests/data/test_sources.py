import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kr_mini_llm.data import sources
from kr_mini_llm.data.cleaning import hangul_ratio
from kr_mini_llm.data.sources import SourceUnavailable, obtain_sources

REPO = Path(__file__).resolve().parents[2]


def test_no_apt_says_what_to_pass_instead(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SourceUnavailable, match=r"apt-get and dpkg-deb not found.*Pass your own corpus instead.*--input"):
        obtain_sources(["debian-faq-ko"], tmp_path)


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="unknown --source nope; choose from libreoffice-help-ko"):
        obtain_sources(["nope"], tmp_path)


@pytest.mark.network
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian/Ubuntu)")
def test_default_corpus_extraction_end_to_end(tmp_path):
    """Downloads the smallest default package (debian-faq-ko, ~0.2 MB), extracts it without
    installing, and runs the text stage of prepare_data.py on it."""
    raw = tmp_path / "raw"
    files = obtain_sources(["debian-faq-ko"], raw, log=lambda *a: None)
    assert files == [raw / "debian-faq-ko.txt"]
    licence = (raw / "debian-faq-ko.copyright").read_text(encoding="utf-8")
    assert "debian-faq-ko" in licence and "Permission is granted" in licence
    docs = files[0].read_text(encoding="utf-8").split("\n\n")
    assert len(docs) >= 10 and "<" not in "".join(docs[:3]) and not (raw / "unpacked").exists()
    assert sum(hangul_ratio(d) > 0.5 for d in docs) >= 10
    deb = next((raw / "debs").glob("debian-faq-ko_*.deb"))
    before = deb.stat().st_mtime_ns
    out = tmp_path / "processed"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--source", "debian-faq-ko",
                        "--raw_dir", str(raw), "--output_dir", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "near dedup" in r.stdout and all((out / f"{s}.txt").stat().st_size > 0 for s in ("train", "valid", "test"))
    assert deb.stat().st_mtime_ns == before           # cached text reused, nothing downloaded again


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_symlink_in_a_package_cannot_pull_text_from_outside(tmp_path):
    """A package whose page is a symlink to a file elsewhere on the machine (absolute, or with
    ../ out of the extraction directory): that file's text must not reach the corpus."""
    secret = tmp_path / "elsewhere" / "secret.html"
    secret.parent.mkdir()
    secret.write_text("<p>" + "비밀 문서의 내용은 절대로 말뭉치에 들어가면 안 됩니다. " * 3 + "</p>", encoding="utf-8")
    pkg = tmp_path / "pkg"
    pages = pkg / "usr/share/doc/debian/FAQ/ko"
    pages.mkdir(parents=True)
    (pages / "ch1.html").write_text("<p>" + "데비안은 자유 소프트웨어로 만든 운영 체제입니다. " * 3 + "</p>", encoding="utf-8")
    (pages / "abs.html").symlink_to(secret)
    (pages / "rel.html").symlink_to("../../../../../../../elsewhere/secret.html")
    (pages / "sub").symlink_to(secret.parent)                 # a directory link too
    doc = pkg / "usr/share/doc/debian-faq-ko"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Permission is granted to copy.\n", encoding="utf-8")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: debian-faq-ko\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: test <t@example.org>\nDescription: test\n", encoding="utf-8")
    raw = tmp_path / "raw"
    (raw / "debs").mkdir(parents=True)
    r = subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(raw / "debs/debian-faq-ko_1.0_all.deb")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (raw / "elsewhere").mkdir()            # what the relative link reaches from raw/unpacked/<pkg>/...
    (raw / "elsewhere" / "secret.html").write_text(secret.read_text(encoding="utf-8"), encoding="utf-8")
    files = obtain_sources(["debian-faq-ko"], raw, log=lambda *a: None)
    text = files[0].read_text(encoding="utf-8")
    assert "데비안은 자유 소프트웨어" in text and "비밀" not in text
