"""Readers: turn --input paths into a stream of documents, one file read incrementally.

Accepted inputs (files, directories, globs; directories are searched recursively):
  *.txt[.gz|.zst]          documents separated by blank lines (paragraphs one per line)
  *.jsonl/.json[.gz|.zst]  one JSON object per line with a text field (`text_field`, default "text");
                           wikiextractor `--json` output (files named wiki_00 ...) is read the same way
  wiki_*[.bz2]             wikiextractor plain output (<doc ...> ... </doc>) is recognised too
  *.xml[.bz2]              a MediaWiki (Wikipedia) XML dump, multistream or not: article pages
                           (namespace 0, no redirects)
  *.parquet                a text column (`text_field`), as Hugging Face data sets ship
  *.html/*.htm             one document per file
  hf:NAME[:CONFIG][:SPLIT] a Hugging Face dataset (needs `datasets` and the network)

No file is ever read whole (except an HTML page): text files by line, XML by element, Parquet by
row batch. Invalid UTF-8 is replaced and counted in `ReadStats`, never fatal. A broken archive or
a file of the wrong kind raises `BadInputFile` naming the file.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from .cleaning import strip_html, strip_wikitext

__all__ = ["Document", "ReadStats", "InputError", "BadInputFile", "expand_inputs", "read_documents",
           "read_file", "decode_utf8", "strip_markup"]

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".xml", ".xml.bz2", ".html", ".htm", ".parquet",
                 ".jsonl.gz", ".txt.gz", ".json.gz", ".jsonl.zst", ".txt.zst", ".json.zst")
# A blank-line-free text file would otherwise make one document of the whole file: past this
# size a document is cut at the next line break.
MAX_DOC_BYTES = 16 << 20


class InputError(FileNotFoundError):
    """An --input that names nothing readable."""


class BadInputFile(ValueError):
    """A file that cannot be read as what its name says (broken archive, wrong format)."""


@dataclass
class Document:
    text: str
    source: str = ""
    markup: Optional[str] = None    # "html", "wikitext", "html?" (strip if tags are found) or None


def strip_markup(text: str, markup: Optional[str]) -> str:
    """Apply the markup stripping a reader asked for (run in worker processes by the pipeline)."""
    if markup == "html" or (markup == "html?" and _HTML_TAG_RE.search(text)):
        return strip_html(text)
    if markup == "wikitext":
        return strip_wikitext(text)
    return text


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
            if not stats.files_with_invalid_utf8 or stats.files_with_invalid_utf8[-1] != name:
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


# ------------------------------------------------------------------------ byte streams
def _zstd_open(p: Path):
    try:
        import zstandard
    except ImportError:
        raise BadInputFile(f"{p}: reading .zst needs the `zstandard` package (pip install zstandard)") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(p, "rb"), closefd=True))


def _open_stream(p: Path):
    """A binary file object that decompresses .gz / .bz2 / .zst on the fly."""
    name = p.name.lower()
    if name.endswith(".gz"):
        return gzip.open(p, "rb")
    if name.endswith(".bz2"):
        return bz2.open(p, "rb")        # multistream (concatenated bz2 streams) included
    if name.endswith(".zst"):
        return _zstd_open(p)
    return open(p, "rb")


def _lines(p: Path, stats: Optional[ReadStats]) -> Iterator[str]:
    """Decoded lines (with their '\\n'), one at a time."""
    with _open_stream(p) as f:
        for raw in f:
            yield decode_utf8(raw, str(p), stats)


_BLANK_LINES_RE = re.compile(r"(\n\s*\n)")
_BLOCK = 1 << 20


def _blank_line_docs(p: Path, stats: Optional[ReadStats]) -> Iterator[str]:
    """Blocks of text separated by blank (whitespace-only) lines, read 1 MB at a time: each
    block is cut at its last line break, and the last separator (it may go on in the next
    block) with the text after it is carried over."""
    carry = ""
    with _open_stream(p) as f:
        tail = b""
        while True:
            block = f.read(_BLOCK)
            data = tail + block
            if block:
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
            else:
                tail = b""
            text = carry + decode_utf8(data, str(p), stats)
            parts = _BLANK_LINES_RE.split(text)     # doc, separator, doc, ..., doc
            if block and len(parts) > 1:
                carry = parts[-2] + parts[-1]
                parts = parts[:-2:2]
            elif block:
                carry, parts = text, []
            else:
                carry, parts = "", parts[::2]
            if len(carry) > MAX_DOC_BYTES:          # no blank line for too long: cut at a line
                cut = carry.rfind("\n")
                cut = cut if cut > 0 else len(carry)
                parts.append(carry[:cut])
                carry = carry[cut + 1:]
            for part in parts:
                if part.strip():
                    yield part.strip("\r\n")
            if not block:
                if carry.strip():
                    yield carry.strip("\r\n")
                return


def _read_jsonl(lines: Iterator[str], p: Path, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputFile(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise BadInputFile(f"{p}:{lineno}: no {text_field!r} field (found {keys}); pass --text_field")
        if isinstance(obj[text_field], str):
            yield obj[text_field]


_HTML_TAG_RE = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>")
_DOC_OPEN_RE = re.compile(r"<doc\b[^>]*>")


def _read_wikiextractor(lines: Iterator[str]) -> Iterator[str]:
    """<doc id=.. title=..>\\ntitle\\nbody...</doc> blocks; the first line (the title) is dropped."""
    body: Optional[List[str]] = None
    for line in lines:
        if body is None:
            m = _DOC_OPEN_RE.search(line)
            if not m:
                continue
            rest = line[m.end():]
            body = [rest[1:] if rest.startswith("\n") else rest]
            line = body.pop()
            if not line:
                continue
        end = line.find("</doc>")
        if end < 0:
            body.append(line)
            continue
        body.append(line[:end])
        yield "".join(body).split("\n", 1)[-1]
        body = None


def _read_wiki_xml(p: Path) -> Iterator[str]:
    """Raw wikitext of the article pages of a MediaWiki export, one <page> at a time."""
    import xml.etree.ElementTree as ET
    with _open_stream(p) as f:
        page_ns, is_redirect, in_page = "0", False, False
        root = None
        for event, el in ET.iterparse(f, events=("start", "end")):
            tag = el.tag.rsplit("}", 1)[-1]
            if event == "start":
                if root is None:
                    root = el
                    if tag != "mediawiki":
                        raise BadInputFile(f"{p}: not a MediaWiki XML dump (root element <{tag}>, expected "
                                           f"<mediawiki>); pass Wikipedia's *-pages-articles*.xml.bz2")
                elif tag == "page":
                    is_redirect, page_ns, in_page = False, "0", True
                continue
            if not in_page:
                continue
            if tag == "ns":
                page_ns = (el.text or "").strip()
            elif tag == "redirect":
                is_redirect = True
            elif tag == "text":
                if page_ns == "0" and not is_redirect and el.text:
                    yield el.text
            elif tag == "page":
                in_page = False
                root.clear()    # drop finished pages: memory stays one page deep
        if root is None:
            raise BadInputFile(f"{p}: empty XML file")


def _read_parquet(p: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(p)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise BadInputFile(f"{p}: no {text_field!r} column (found {names}); pass --text_field")
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for t in batch.column(0).to_pylist():
            if isinstance(t, str):
                yield t


def _peek(p: Path, n: int = 4096) -> str:
    """The file's first non-blank characters ('' for a blank file)."""
    with _open_stream(p) as f:
        while True:
            block = f.read(n)
            if not block:
                return ""
            if block.strip():
                return block.decode("utf-8", errors="replace").lstrip()


def _read_raw(p: Path, text_field: str, stats: Optional[ReadStats]) -> Iterator[Document]:
    name = p.name.lower()
    src = str(p)
    if name.endswith((".xml", ".xml.bz2")):
        for t in _read_wiki_xml(p):
            yield Document(t, src, "wikitext")
        return
    if name.endswith(".parquet"):
        for t in _read_parquet(p, text_field):
            yield Document(t, src, "html?")
        return
    if name.endswith((".html", ".htm")):
        with open(p, "rb") as f:
            text = decode_utf8(f.read(), src, stats)
        if text.strip():
            yield Document(text, src, "html")
        elif stats is not None:
            stats.empty_files += 1
        return
    head = _peek(p)
    if not head.strip():
        if stats is not None:
            stats.empty_files += 1
        return
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")) or (
            _is_wikiextractor_file(p) and head.startswith("{")):
        for t in _read_jsonl(_lines(p, stats), p, text_field):
            yield Document(t, src, "html?")
    elif _is_wikiextractor_file(p) or head.startswith("<doc "):
        for t in _read_wikiextractor(_lines(p, stats)):
            yield Document(t, src, "html")
    else:
        for t in _blank_line_docs(p, stats):
            yield Document(t, src, None)


def _describe(p: Path, e: BaseException) -> str:
    import xml.etree.ElementTree as ET
    name = p.name.lower()
    msg = str(e) or type(e).__name__
    if isinstance(e, EOFError) or "end-of-stream" in msg or "truncated" in msg.lower():
        return f"{p}: the archive is truncated ({msg}); download it again"
    if isinstance(e, ET.ParseError):
        return f"{p}: not well-formed XML ({msg}); expected a complete MediaWiki dump"
    if name.endswith(".bz2"):
        return f"{p}: not a valid bz2 archive ({msg})"
    if name.endswith(".gz"):
        return f"{p}: not a valid gzip archive ({msg})"
    if name.endswith(".zst"):
        return f"{p}: not a valid zstd archive ({msg})"
    if name.endswith(".parquet"):
        return f"{p}: not a readable Parquet file ({msg})"
    return f"{p}: cannot be read ({msg})"


def _read_errors():
    errs = [OSError, EOFError, UnicodeDecodeError]
    import xml.etree.ElementTree as ET
    errs.append(ET.ParseError)
    try:
        import zstandard
        errs.append(zstandard.ZstdError)
    except ImportError:
        pass
    try:
        import pyarrow
        errs.append(pyarrow.ArrowException)
    except ImportError:
        pass
    return tuple(errs)


def read_raw_file(p: Path, text_field: str = "text", stats: Optional[ReadStats] = None) -> Iterator[Document]:
    """Documents of one file with their markup still in place (see `strip_markup`)."""
    p = Path(p)
    errors = _read_errors()
    try:
        yield from _read_raw(p, text_field, stats)
    except BadInputFile:
        raise
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except errors as e:
        raise BadInputFile(_describe(p, e)) from None


def read_file(p: Path, text_field: str = "text", stats: Optional[ReadStats] = None) -> Iterator[str]:
    """Documents (markup stripped, not yet normalised) from one file."""
    for d in read_raw_file(p, text_field, stats):
        t = strip_markup(d.text, d.markup)
        if d.markup != "wikitext" or t.strip():
            yield t


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


def read_documents(inputs, text_field: str = "text", stats: Optional[ReadStats] = None,
                   raw_markup: bool = False) -> Iterator[Document]:
    """Documents from every input, streamed. `stats` (a ReadStats) collects counts and invalid
    UTF-8. With `raw_markup` the markup is left in place and named in `Document.markup` (the
    pipeline strips it in its worker processes)."""
    stats = stats if stats is not None else ReadStats()
    for item in expand_inputs(inputs):
        stats.files += 1
        if isinstance(item, str):
            docs = (Document(t, item) for t in _read_hf(item, text_field))
        else:
            docs = read_raw_file(item, text_field, stats)
        for d in docs:
            if not raw_markup:
                t = strip_markup(d.text, d.markup)
                if d.markup == "wikitext" and not t.strip():
                    continue
                d = Document(t, d.source)
            stats.documents += 1
            yield d
