"""The default corpus: Korean prose extracted from Debian packages that ship it.

Nothing is installed: `apt-get download` fetches the .deb into a cache directory and
`dpkg-deb -x` unpacks it there. Each package's text is written to `<raw_dir>/<package>.txt`
(documents separated by blank lines) with its Debian copyright file beside it as
`<raw_dir>/<package>.copyright`. A rerun reuses both the .deb and the extracted text.

Measured on Debian 12 (bookworm), markup stripped (see docs/data.md):
  libreoffice-help-ko   3.3 MB .deb, 2,561 help pages, ~640k Hangul syllables    (MPL-2.0)
  debian-faq-ko         0.2 MB .deb, 17 chapters,     ~38k Hangul syllables      (verbatim-copy licence)
  gimp-help-ko           50 MB .deb, 685 pages, mostly untranslated: ~87k Hangul (gimp-help-common)
  konlpy (PyPI)          19 MB wheel, 11 files (constitution, bills), ~36k Hangul: not a training source;
                         the out-of-domain evaluation set instead (kolaw.py)
The default mix is libreoffice-help-ko + debian-faq-ko: most Korean prose per byte
downloaded, free licences that permit redistribution of derived text. gimp-help-ko is
available with `--source gimp-help-ko` but costs 50 MB for little Korean text.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import KrMiniLlmError

__all__ = ["DebSource", "SOURCES", "DEFAULT_SOURCES", "SourceUnavailable", "obtain_sources"]


class SourceUnavailable(KrMiniLlmError, RuntimeError):
    """The default corpus cannot be obtained on this machine (no apt, no network, ...)."""


@dataclass(frozen=True)
class DebSource:
    package: str
    text_glob: str                  # inside the unpacked tree, relative to its root
    copyright_package: str = ""     # package holding the copyright file, when another one
    min_hangul_syllables: int = 20  # pages with less Korean than this are untranslated: skipped

    @property
    def copyright_pkg(self) -> str:
        return self.copyright_package or self.package


SOURCES: Dict[str, DebSource] = {
    "libreoffice-help-ko": DebSource("libreoffice-help-ko", "usr/share/libreoffice/help/ko/text/**/*.html"),
    "debian-faq-ko": DebSource("debian-faq-ko", "usr/share/doc/debian/FAQ/ko/*.html"),
    "gimp-help-ko": DebSource("gimp-help-ko", "usr/share/gimp/2.0/help/ko/**/*.html", "gimp-help-common"),
}
DEFAULT_SOURCES = ("libreoffice-help-ko", "debian-faq-ko")

_NO_APT = (
    "The default Korean corpus is extracted from Debian packages ({pkgs}) with `apt-get download` "
    "and `dpkg-deb -x`, which this machine does not have ({why}). Pass your own corpus instead, "
    "e.g. `--input path/to/texts/ corpus.jsonl kowiki-latest-pages-articles.xml.bz2` "
    "(plain text, JSONL with a \"text\" field, a Wikipedia dump or wikiextractor output), or copy "
    "<raw_dir>/*.txt made on a Debian/Ubuntu machine and pass them with --input."
)


def _run(cmd: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _download(package: str, deb_dir: Path) -> Path:
    deb_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(deb_dir.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    r = _run(["apt-get", "download", package], deb_dir)
    found = sorted(deb_dir.glob(f"{package}_*.deb"))
    if r.returncode != 0 or not found:
        hint = ""
        if "Unable to locate package" in r.stderr or "no installation candidate" in r.stderr:
            hint = " (run `apt-get update` first; on non-Debian systems pass --input instead)"
        raise SourceUnavailable(f"`apt-get download {package}` failed{hint}:\n{r.stderr.strip()[-2000:]}")
    return found[-1]


def _extract(deb: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    r = _run(["dpkg-deb", "-x", str(Path(deb).resolve()), str(dest.resolve())], dest)
    if r.returncode != 0:
        raise SourceUnavailable(f"`dpkg-deb -x {deb}` failed:\n{r.stderr.strip()[-2000:]}")


def _inside(tree: Path, files) -> List[Path]:
    """The files that really lie inside `tree`: a package may ship symlinks (absolute, or with
    ../) to files elsewhere on the machine, whose text must never enter the corpus."""
    root = tree.resolve()
    out = []
    for f in files:
        target = f.resolve()
        if target.is_relative_to(root) and target.is_file():
            out.append(f)
    return out


def _hangul_syllables(text: str) -> int:
    return sum(1 for c in text if "\uac00" <= c <= "\ud7a3")


def obtain_sources(names: Sequence[str] = DEFAULT_SOURCES, raw_dir: os.PathLike = "data/raw",
                   log=print) -> List[Path]:
    """Make sure `<raw_dir>/<package>.txt` (+ `.copyright`) exist for each source; return the
    text files. Downloads (never installs) and extracts only what is missing."""
    from .readers import read_file, ReadStats

    raw_dir = Path(raw_dir)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown --source {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    todo = [n for n in names if not (raw_dir / f"{n}.txt").exists() or not (raw_dir / f"{n}.copyright").exists()]
    if todo:
        missing = [t for t in ("apt-get", "dpkg-deb") if shutil.which(t) is None]
        if missing:
            raise SourceUnavailable(_NO_APT.format(pkgs=", ".join(todo), why=f"{' and '.join(missing)} not found, "
                                                   f"platform {sys.platform}"))
    out = []
    for name in names:
        src = SOURCES[name]
        txt, cpy = raw_dir / f"{name}.txt", raw_dir / f"{name}.copyright"
        if name in todo:
            deb_dir = raw_dir / "debs"
            log(f"[sources] {name}: apt-get download into {deb_dir}")
            deb = _download(src.package, deb_dir)
            tree = raw_dir / "unpacked" / name
            _extract(deb, tree)
            if src.copyright_pkg != src.package:
                cdeb = _download(src.copyright_pkg, deb_dir)
                _extract(cdeb, raw_dir / "unpacked" / src.copyright_pkg)
                ctree = raw_dir / "unpacked" / src.copyright_pkg
            else:
                ctree = tree
            cfile = ctree / "usr/share/doc" / src.copyright_pkg / "copyright"
            if not _inside(ctree, [cfile]):
                raise SourceUnavailable(f"{name}: no copyright file at {cfile}; refusing to use text without its licence")
            files = _inside(tree, sorted(tree.glob(src.text_glob)))
            stats = ReadStats()
            docs = []
            for f in files:
                for d in read_file(f, stats=stats):
                    # one document per page; blank lines inside would split it on reading back
                    d = "\n".join(ln.strip() for ln in d.splitlines() if ln.strip())
                    if _hangul_syllables(d) >= src.min_hangul_syllables:
                        docs.append(d)
            if not docs:
                raise SourceUnavailable(f"{name}: no Korean pages found under {tree}/{src.text_glob}")
            tmp = txt.with_suffix(".txt.tmp")
            tmp.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
            header = (f"Text in {txt.name} was extracted (markup stripped) from the Debian package "
                      f"{deb.name}; it is distributed under the terms below "
                      f"(the package's /usr/share/doc/{src.copyright_pkg}/copyright).\n\n")
            cpy.write_text(header + cfile.read_text(encoding="utf-8", errors="replace"), encoding="utf-8")
            os.replace(tmp, txt)
            shutil.rmtree(raw_dir / "unpacked", ignore_errors=True)
            log(f"[sources] {name}: {len(docs):,} of {len(files):,} pages with Korean text -> {txt} "
                f"({txt.stat().st_size / 1e6:.2f} MB), licence -> {cpy}")
        out.append(txt)
    return out
