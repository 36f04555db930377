"""The out-of-domain Korean evaluation set: the Constitution of the Republic of Korea and ten bills
of the National Assembly, as konlpy's wheel ships them (konlpy/data/corpus/kolaw, kobill).

Legal prose, where the training corpus is help pages and a FAQ: a model's figures on it say how far
what it learnt carries beyond its own kind of text. Laws and bills are not protected works under
the Korean Copyright Act (article 7), so the text may be used and kept; `<name>.copyright`, written
beside the text, records that and where the text came from.

The pinned wheel (19 MB) is fetched with `pip download --no-deps` into a cache folder, or an
already downloaded copy there is used; its sha256 must match. The files are read straight from
the zip: konlpy (and JPype, which it needs) is never installed or imported. The text gets the
corpus's cleaning (kr_mini_llm.data.cleaning, default settings): one document per bill, and one
per chapter of the Constitution (the preamble and the addenda are documents of their own).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List, Tuple

from .sources import SourceUnavailable

__all__ = ["KolawUnavailable", "OOD_FILE", "WHEEL", "WHEEL_SHA256", "default_paths", "kolaw_documents",
           "obtain_kolaw"]

PACKAGE = "konlpy==0.6.0"
WHEEL = "konlpy-0.6.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "0b7928059e20eb1c72f6fe65a3d12c104fae9e68173904e16beef869cf0ea590"
WHEEL_URL = "https://pypi.org/project/konlpy/0.6.0/#files"
CONSTITUTION = "konlpy/data/corpus/kolaw/constitution.txt"
BILLS = "konlpy/data/corpus/kobill/"
LICENCE = "konlpy-0.6.0.dist-info/LICENSE"
# Inside the data folder (data/ by default): the evaluation text, and the wheel's cache.
OOD_FILE = Path("eval") / "ood_kolaw.txt"
WHEEL_CACHE = Path("raw") / "wheels"

# A chapter heading ("제1장 총강") or the addenda (" 펼침  부칙 <헌법 제10호, 1987.10.29.>  부칙보기",
# web-page residue included) opens a document.
_HEADING = re.compile(r"^\s*(제\s*\d+\s*장\s|(펼침\s*)?부\s*칙\s*<)")


class KolawUnavailable(SourceUnavailable):
    """The out-of-domain set cannot be obtained here (no network for pip, a wheel that fails its checksum)."""


def default_paths(data_dir: str | os.PathLike = "data") -> Tuple[Path, Path]:
    """(the evaluation text, the wheel cache folder) inside a data folder."""
    data_dir = Path(data_dir)
    return data_dir / OOD_FILE, data_dir / WHEEL_CACHE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_wheel(path: Path, sha256: str = WHEEL_SHA256) -> None:
    got = _sha256(path)
    if got != sha256:
        raise KolawUnavailable(
            f"{path}: sha256 {got}, expected {sha256} ({WHEEL} from PyPI); refusing to use it. Delete the file "
            f"and run again to download it, or put the genuine wheel there (`pip download --no-deps {PACKAGE}`)")


def download_wheel(cache_dir: Path, log=print) -> Path:
    """`pip download --no-deps` of the pinned wheel into cache_dir (nothing is installed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache_dir),
           "--retries", "0", "--timeout", "15", "--disable-pip-version-check", "--quiet", PACKAGE]
    log(f"[kolaw] pip download {PACKAGE} into {cache_dir} (19 MB, once)")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        r = subprocess.CompletedProcess(cmd, 1, "", "pip download did not finish within 600 s")
    if r.returncode != 0 or not (cache_dir / WHEEL).is_file():
        raise KolawUnavailable(
            f"`pip download --no-deps {PACKAGE}` failed (no network or no package index?): "
            f"{(r.stderr or r.stdout).strip()[-800:]}\nDownload {WHEEL} on another machine ({WHEEL_URL}) and "
            f"copy it into {cache_dir}")
    return cache_dir / WHEEL


def _read(zf: zipfile.ZipFile, name: str) -> str:
    return zf.read(name).decode("utf-8", errors="replace")   # U+FFFD is removed by the cleaning


def split_constitution(text: str) -> List[str]:
    """The preamble, each chapter and the addenda, as separate documents."""
    docs, current = [], []
    for line in text.splitlines():
        if _HEADING.match(line) and any(x.strip() for x in current):
            docs.append("\n".join(current))
            current = []
        current.append(line)
    docs.append("\n".join(current))
    return [d for d in docs if d.strip()]


def raw_documents(wheel: Path) -> List[str]:
    """The Constitution by chapter, then the bills (one document each, by file name), from the zip."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            bills = sorted(n for n in names if n.startswith(BILLS) and n.endswith(".txt"))
            if CONSTITUTION not in names or not bills:
                raise KolawUnavailable(f"{wheel}: no {CONSTITUTION} or {BILLS}*.txt inside; not a konlpy 0.6.0 wheel")
            return split_constitution(_read(zf, CONSTITUTION)) + [_read(zf, n) for n in bills]
    except zipfile.BadZipFile as e:
        raise KolawUnavailable(f"{wheel}: not a readable wheel ({e}); delete it and run again") from None


def kolaw_documents(wheel: Path) -> List[str]:
    """The cleaned documents (the corpus's cleaning, default settings)."""
    from .cleaning import CleanConfig, clean_documents

    return clean_documents(raw_documents(wheel), CleanConfig())


def _licence(wheel: Path, text_name: str, documents: int, package_licence: str) -> str:
    return f"""{text_name}: the out-of-domain Korean evaluation set of kr-mini-llm ({documents} documents).

Source: {WHEEL} (PyPI, {WHEEL_URL}), sha256 {WHEEL_SHA256},
files {CONSTITUTION} (the Constitution of the Republic of Korea, split by chapter) and
{BILLS}*.txt (ten bills submitted to the National Assembly), read from the wheel without installing
it, then cleaned as the training corpus is (NFC, whitespace, lines of >= 5 characters with a Hangul
share >= 0.3, documents of >= 100 characters, exact and near duplicates dropped).

Licence: these are the Constitution and bills of the Republic of Korea. Under article 7 of the
Korean Copyright Act (저작권법 제7조, 보호받지 못하는 저작물), the Constitution, laws, treaties,
decrees, ordinances and rules, and notices and similar documents of the State, are not protected
works; the text may be used, changed and redistributed freely. It is not a work of konlpy's authors;
konlpy itself (its code) is under the licence below, and none of its code is used or redistributed.

--- {LICENCE} ({wheel.name}) ---
{package_licence}"""


def obtain_kolaw(out_path: str | os.PathLike, cache_dir: str | os.PathLike, download: bool = True,
                 wheel: str | os.PathLike | None = None, sha256: str = WHEEL_SHA256, log=print) -> Path:
    """Makes sure `out_path` (+ its `.copyright` beside it) exists; returns it. Uses `wheel`, else the
    wheel in cache_dir, else (download=True) pip-downloads it there. KolawUnavailable when it cannot."""
    out_path = Path(out_path)
    licence_path = out_path.with_suffix(".copyright")
    if out_path.is_file() and licence_path.is_file():
        return out_path
    cache_dir = Path(cache_dir)
    if wheel is None:
        wheel = cache_dir / WHEEL
        if not wheel.is_file():
            if not download:
                raise KolawUnavailable(f"{out_path} is missing and {wheel} is not there to make it from")
            wheel = download_wheel(cache_dir, log)
    wheel = Path(wheel)
    check_wheel(wheel, sha256)
    docs = kolaw_documents(wheel)
    with zipfile.ZipFile(wheel) as zf:
        package_licence = _read(zf, LICENCE) if LICENCE in zf.namelist() else "(the wheel holds no LICENSE file)\n"
    from ..io.atomic import atomic_write_text
    from .pipeline import DOC_SEPARATOR

    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(licence_path, _licence(wheel, out_path.name, len(docs), package_licence))
    atomic_write_text(out_path, DOC_SEPARATOR.join(docs) + "\n")   # last: its presence means done
    log(f"[kolaw] {len(docs)} documents, {out_path.stat().st_size / 1e3:.0f} KB -> {out_path}, "
        f"licence and source -> {licence_path}")
    return out_path
