"""Readers: turn --input paths into a stream of documents (markup already stripped).

Accepted inputs (files, directories, globs; directories are searched recursively):
  *.txt          documents separated by blank lines (paragraphs one per line)
  *.jsonl        one JSON object per line with a text field (`text_field`, default "text");
                 wikiextractor `--json` output (files named wiki_00 ...) is read the same way
  wiki_*         wikiextractor plain output (<doc ...> ... </doc>) is recognised too
  *.xml.bz2/.xml a MediaWiki (Wikipedia) XML dump: article pages (namespace 0, no redirects)
  *.html/*.htm   one document per file
  hf:NAME[:CONFIG][:SPLIT]  a Hugging Face dataset (needs `datasets` and the network)
Invalid UTF-8 is replaced and counted in `ReadStats`, never fatal.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from .cleaning import strip_html, strip_wikitext

__all__ = ["Document", "ReadStats", "InputError", "expand_inputs", "read_documents", "decode_utf8"]

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".xml", ".xml.bz2", ".html", ".htm", ".jsonl.gz", ".txt.gz")


class InputError(FileNotFoundError):
    """An --input that names nothing readable."""


@dataclass
class Document:
    text: str
    source: str = ""


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    invalid_utf8: int = 0                       # invalid byte sequences replaced
    files_with_invalid_utf8: List[str] = field(default_factory=list)
    empty_files: int = 0

    def summary(self) -> str:
        s = f"read {self.documents:,} documents from {self.files:,} files"
        if self.empty_files:
            s += f"; {self.empty_files} empty files"
        if self.invalid_utf8:
            s += (f"; {self.invalid_utf8:,} invalid UTF-8 sequences replaced in "
                  f"{len(self.files_with_invalid_utf8)} files (e.g. {self.files_with_invalid_utf8[0]})")
        return s


def decode_utf8(data: bytes, name: str = "", stats: Optional[ReadStats] = None) -> str:
    """Decode UTF-8, replacing invalid sequences (counted in `stats`)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode("utf-8"))
        if stats is not None and bad > 0:
            stats.invalid_utf8 += bad
            stats.files_with_invalid_utf8.append(name)
        return text


def _is_wikiextractor_file(p: Path) -> bool:
    return re.fullmatch(r"wiki_\d+(\.bz2)?", p.name) is not None


def _accepted(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith(TEXT_SUFFIXES) or _is_wikiextractor_file(p)


def expand_inputs(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Union[Path, str]]:
    """Expand files, directories and globs to a sorted, de-duplicated list of files.
    `hf:` specs pass through. Raises InputError naming any input that matches nothing."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: List[Union[Path, str]] = []
    seen = set()
    for spec in inputs:
        spec = str(spec)
        if spec.startswith("hf:"):
            out.append(spec)
            continue
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(spec), recursive=True))]
        if not matches:
            raise InputError(f"--input {spec!r}: no such file, directory or glob match")
        files: List[Path] = []
        for m in matches:
            if m.is_dir():
                found = sorted(p for p in m.rglob("*") if p.is_file() and _accepted(p))
                if not found:
                    raise InputError(f"--input {spec!r}: directory {str(m)!r} holds no readable files "
                                     f"({', '.join(TEXT_SUFFIXES)}, wikiextractor wiki_NN)")
                files.extend(found)
            else:
                files.append(m)
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                out.append(f)
    if not out:
        raise InputError("no --input given")
    return out


def _open_bytes(p: Path) -> bytes:
    if p.name.endswith(".gz"):
        with gzip.open(p, "rb") as f:
            return f.read()
    if p.name.endswith(".bz2"):
        with bz2.open(p, "rb") as f:
            return f.read()
    return p.read_bytes()


def _split_blank_lines(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        if block.strip():
            yield block.strip("\r\n")


def _read_jsonl(text: str, p: Path, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{p}:{lineno}: no {text_field!r} field (found {keys}); pass --text_field")
        if isinstance(obj[text_field], str):
            yield obj[text_field]


_HTML_TAG_RE = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>")
_WIKI_DOC_RE = re.compile(r"<doc\b[^>]*>\n?(.*?)</doc>", re.S)


def _read_wiki_xml(p: Path) -> Iterator[str]:
    import xml.etree.ElementTree as ET
    opener = bz2.open if p.name.endswith(".bz2") else open
    with opener(p, "rb") as f:
        ns, title, is_redirect, page_ns = "", None, False, "0"
        for event, el in ET.iterparse(f, events=("start", "end")):
            tag = el.tag.rsplit("}", 1)[-1]
            if event == "start":
                if tag == "page":
                    is_redirect, page_ns = False, "0"
                continue
            if tag == "ns":
                page_ns = (el.text or "").strip()
            elif tag == "redirect":
                is_redirect = True
            elif tag == "text":
                if page_ns == "0" and not is_redirect and el.text:
                    body = strip_wikitext(el.text)
                    if body.strip():
                        yield body
            elif tag == "page":
                el.clear()


def _read_hf(spec: str, text_field: str) -> Iterator[str]:
    parts = spec[3:].split(":")
    name, config, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "train"
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise InputError(f"--input {spec!r} needs the Hugging Face `datasets` library "
                         "(pip install datasets) and network access; or export the data to JSONL "
                         "and pass that file") from None
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for row in ds:
        t = row.get(text_field)
        if isinstance(t, str):
            yield t


def read_file(p: Path, text_field: str = "text", stats: Optional[ReadStats] = None) -> Iterator[str]:
    """Documents (markup stripped, not yet normalised) from one file."""
    name = p.name.lower()
    if name.endswith((".xml", ".xml.bz2")):
        yield from _read_wiki_xml(p)
        return
    text = decode_utf8(_open_bytes(p), str(p), stats)
    if not text.strip():
        if stats is not None:
            stats.empty_files += 1
        return
    stripped = text.lstrip()
    if name.endswith((".html", ".htm")):
        yield strip_html(text)
    elif name.endswith((".jsonl", ".json", ".jsonl.gz")) or (_is_wikiextractor_file(p) and stripped.startswith("{")):
        for t in _read_jsonl(text, p, text_field):
            yield strip_html(t) if _HTML_TAG_RE.search(t) else t
    elif _is_wikiextractor_file(p) or stripped.startswith("<doc "):
        for m in _WIKI_DOC_RE.finditer(text):
            body = m.group(1).split("\n", 1)[-1]   # first line is the title
            yield strip_html(body)
    else:
        yield from _split_blank_lines(text)


def read_documents(inputs, text_field: str = "text", stats: Optional[ReadStats] = None) -> Iterator[Document]:
    """Documents from every input. `stats` (a ReadStats) collects counts and invalid UTF-8."""
    stats = stats if stats is not None else ReadStats()
    for item in expand_inputs(inputs):
        stats.files += 1
        it = _read_hf(item, text_field) if isinstance(item, str) else read_file(item, text_field, stats)
        for t in it:
            stats.documents += 1
            yield Document(t, str(item))
