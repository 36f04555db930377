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
