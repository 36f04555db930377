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

No file is ever read whole (except an HTML page): text files by block, XML by element, Parquet by
row batch. Each text file's encoding is found from its first bytes (encoding.py: BOM, UTF-8, else
CP949/EUC-KR, UTF-16 or Johab) unless `encoding` names one, and noted in `ReadStats` when it is
not plain UTF-8; a stray invalid byte sequence is replaced and counted there, never fatal. A
broken archive, a file of the wrong kind or one whose encoding cannot be told raises
`BadInputFile` naming the file. (XML and Parquet carry their own encoding.)
"""
from __future__ import annotations

import bz2
import glob
import gzip
import io
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

from ..errors import KrMiniLlmError
from .cleaning import strip_html, strip_wikitext
from .encoding import SNIFF_BYTES, Decoder, EncodingError, check_encoding, sniff

__all__ = ["Document", "ReadStats", "InputError", "BadInputFile", "expand_inputs", "read_documents",
           "read_file", "strip_markup"]

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".xml", ".xml.bz2", ".html", ".htm", ".parquet",
                 ".jsonl.gz", ".txt.gz", ".json.gz", ".jsonl.zst", ".txt.zst", ".json.zst")
# A blank-line-free text file would otherwise make one document of the whole file: past this
# many characters a document is cut at the next line break (a longer line: where it got to).
MAX_DOC_CHARS = 16 << 20


class InputError(KrMiniLlmError, FileNotFoundError):
    """An --input that names nothing readable."""


class BadInputFile(KrMiniLlmError, ValueError):
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
    invalid_utf8: int = 0                       # invalid byte sequences replaced (in the file's encoding)
    files_with_invalid_utf8: List[str] = field(default_factory=list)
    empty_files: int = 0
    encodings: Dict[str, str] = field(default_factory=dict)    # file -> encoding, for files not plain UTF-8
    how: Dict[str, str] = field(default_factory=dict)          # file -> "BOM", "detected" or "--encoding"
    SHOWN = 50                                  # files listed one per line in the summary

    def note_encoding(self, name: str, encoding: str, how: str):
        if encoding != "utf-8":
            self.encodings[name], self.how[name] = encoding, how

    def note_invalid(self, name: str, count: int):
        if count:
            self.invalid_utf8 += count
            self.files_with_invalid_utf8.append(name)

    def summary(self) -> str:
        s = f"read {self.documents:,} documents from {self.files:,} files"
        if self.empty_files:
            s += f"; {self.empty_files} empty files"
        if self.invalid_utf8:
            first = self.files_with_invalid_utf8[0]
            s += (f"; {self.invalid_utf8:,} invalid {self.encodings.get(first, 'UTF-8')} sequences replaced in "
                  f"{len(self.files_with_invalid_utf8)} files (e.g. {first})")
        if self.encodings:
            per = {}
            for enc in self.encodings.values():
                per[enc] = per.get(enc, 0) + 1
            s += f"; {len(self.encodings)} files not in plain UTF-8 ({', '.join(f'{e}: {n}' for e, n in per.items())})"
            for name, enc in list(self.encodings.items())[:self.SHOWN]:
                s += f"\n  {name}: decoded as {enc} ({self.how[name]})"
            if len(self.encodings) > self.SHOWN:
                s += f"\n  ... and {len(self.encodings) - self.SHOWN} more"
        return s


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


def _text_chunks(p: Path, stats: Optional[ReadStats], encoding: Optional[str]) -> Iterator[str]:
    """The file's text, decoded a block at a time; its encoding is found from the first block
    (unless `encoding` names it) and noted in `stats`."""
    with _open_stream(p) as f:
        block = f.read(SNIFF_BYTES)
        while 0 < len(block) < SNIFF_BYTES:     # (a decompressor may return less than asked)
            more = f.read(SNIFF_BYTES - len(block))
            if not more:
                break
            block += more
        if encoding is None:
            enc, how = sniff(block, complete=len(block) < SNIFF_BYTES)
        else:
            enc, how = encoding, "--encoding"
        if stats is not None and block:
            stats.note_encoding(str(p), enc, how)
        dec = Decoder(enc)
        try:
            while block:
                text = dec.decode(block)
                if text:
                    yield text
                block = f.read(_BLOCK)
            text = dec.decode(b"", final=True)
            if text:
                yield text
        finally:
            if stats is not None:
                stats.note_invalid(str(p), dec.errors)


def _take(parts: List[str]) -> str:
    """The pieces joined; the list is emptied, so a generator that yields this holds no copy."""
    text = "".join(parts)
    parts.clear()
    return text


def _lines(chunks: Iterator[str]) -> Iterator[str]:
    """Lines (with their '\\n'; only '\\n' ends a line, as JSON Lines wants), one at a time."""
    partial: List[str] = []
    for chunk in chunks:
        parts = chunk.split("\n")
        if len(parts) == 1:
            partial.append(chunk)
            continue
        partial.append(parts[0] + "\n")
        yield _take(partial)
        for line in parts[1:-1]:
            yield line + "\n"
        if parts[-1]:
            partial.append(parts[-1])
    if partial:
        yield _take(partial)


_BLANK_LINES_RE = re.compile(r"\n\s*\n")
_LEADING_BLANK_RE = re.compile(r"\s*\n")      # blank lines at the start of a block
_BLOCK = 1 << 20


def _line_blocks(chunks: Iterator[str]) -> Iterator[str]:
    """The text in blocks that end at a line break (but the last), a line longer than
    MAX_DOC_CHARS cut where it got to; pieces are joined once, never re-copied as they grow."""
    partial: List[str] = []
    size = 0
    for chunk in chunks:
        cut = chunk.rfind("\n") + 1
        if cut:
            partial.append(chunk[:cut])
            yield _take(partial)
            if cut < len(chunk):
                partial.append(chunk[cut:])
            size = len(chunk) - cut
        else:
            partial.append(chunk)
            size += len(chunk)
            if size > MAX_DOC_CHARS:
                yield _take(partial)
                size = 0
    if partial:
        yield _take(partial)


def _joined(doc: List[str]) -> str:
    """The pieces of a document, without its leading and trailing line breaks (the big middle
    piece is not copied twice)."""
    if doc:
        doc[0] = doc[0].lstrip("\r\n")
        doc[-1] = doc[-1].rstrip("\r\n")
    return _take(doc)


def _blank_line_docs(chunks: Iterator[str]) -> Iterator[str]:
    """Documents separated by blank (whitespace-only) lines. A separator may begin at the end of
    one block and go on at the start of the next; a document past MAX_DOC_CHARS is cut there."""
    doc: List[str] = []
    size = 0
    for block in _line_blocks(chunks):
        if doc and (doc[-1].endswith("\n") or doc == [""]):      # after a line break or a separator
            m = _LEADING_BLANK_RE.match(block)
            if m:
                yield from _nonblank(_joined(doc))
                doc, size, block = [], 0, block[m.end():]
        parts = _BLANK_LINES_RE.split(block)            # doc, doc, ..., doc
        doc.append(parts[0])
        size += len(parts[0])
        if len(parts) > 1:
            yield from _nonblank(_joined(doc))
            for part in parts[1:-1]:
                yield from _nonblank(part.strip("\r\n"))
            doc, size = [parts[-1]], len(parts[-1])
        if size > MAX_DOC_CHARS:
            yield from _nonblank(_joined(doc))
            doc, size = [], 0
    yield from _nonblank(_joined(doc))


def _nonblank(text: str) -> Iterator[str]:
    if text and not text.isspace():
        yield text


def _read_jsonl(lines: Iterator[str], p: Path, text_field: str) -> Iterator[str]:
    lineno = 0
    for line in lines:                      # (not enumerate: its reused tuple would hold the last line)
        lineno += 1
        if not line or line.isspace():
            continue
        try:
            obj = json.loads(line)          # (JSON allows the whitespace around: no stripped copy)
        except json.JSONDecodeError as e:
            raise BadInputFile(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        del line                            # a long record is not held twice while it is used
        if not isinstance(obj, dict) or text_field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise BadInputFile(f"{p}:{lineno}: no {text_field!r} field (found {keys}); pass --text_field")
        text = obj.pop(text_field)
        del obj
        if isinstance(text, str):
            # A lone "\ud800" escape is valid JSON but no text: it could never be written as UTF-8.
            yield _LONE_SURROGATE_RE.sub("\ufffd", text) if _LONE_SURROGATE_RE.search(text) else text


_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


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


def _peek(chunks: Iterator[str]):
    """(the text's first non-blank characters, '' for a blank file; the same chunks, unconsumed)."""
    seen: List[str] = []
    for chunk in chunks:
        seen.append(chunk)
        head = chunk.lstrip()
        if head:
            return head[:4096], itertools.chain(seen, chunks)
    return "", iter(seen)


def _read_raw(p: Path, text_field: str, stats: Optional[ReadStats], encoding: Optional[str]) -> Iterator[Document]:
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
    chunks = _text_chunks(p, stats, encoding)
    if name.endswith((".html", ".htm")):
        text = "".join(chunks)
        if text.strip():
            yield Document(text, src, "html")
        elif stats is not None:
            stats.empty_files += 1
        return
    head, chunks = _peek(chunks)
    if not head:
        if stats is not None:
            stats.empty_files += 1
        return
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")) or (
            _is_wikiextractor_file(p) and head.startswith("{")):
        for t in _read_jsonl(_lines(chunks), p, text_field):
            yield Document(t, src, "html?")
    elif _is_wikiextractor_file(p) or head.startswith("<doc "):
        for t in _read_wikiextractor(_lines(chunks)):
            yield Document(t, src, "html")
    else:
        for t in _blank_line_docs(chunks):
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


def read_raw_file(p: Path, text_field: str = "text", stats: Optional[ReadStats] = None,
                  encoding: Optional[str] = None) -> Iterator[Document]:
    """Documents of one file with their markup still in place (see `strip_markup`); `encoding`
    None finds each file's encoding."""
    p = Path(p)
    errors = _read_errors()
    try:
        yield from _read_raw(p, text_field, stats, encoding)
    except BadInputFile:
        raise
    except EncodingError as e:
        raise BadInputFile(f"{p}: {e}") from None
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except errors as e:
        raise BadInputFile(_describe(p, e)) from None


def read_file(p: Path, text_field: str = "text", stats: Optional[ReadStats] = None,
              encoding: Optional[str] = None) -> Iterator[str]:
    """Documents (markup stripped, not yet normalised) from one file."""
    for d in read_raw_file(p, text_field, stats, encoding):
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
                   raw_markup: bool = False, encoding: Optional[str] = None) -> Iterator[Document]:
    """Documents from every input, streamed. `stats` (a ReadStats) collects counts, encodings
    and invalid sequences. With `raw_markup` the markup is left in place and named in
    `Document.markup` (the pipeline strips it in its worker processes). `encoding` (e.g. "cp949")
    is every text file's encoding; None finds each file's own."""
    stats = stats if stats is not None else ReadStats()
    if encoding is not None:
        check_encoding(encoding)
    for item in expand_inputs(inputs):
        stats.files += 1
        if isinstance(item, str):
            docs = (Document(t, item) for t in _read_hf(item, text_field))
        else:
            docs = read_raw_file(item, text_field, stats, encoding)
        for d in docs:
            if not raw_markup:
                t = strip_markup(d.text, d.markup)
                if d.markup == "wikitext" and not t.strip():
                    continue
                d = Document(t, d.source)
            stats.documents += 1
            yield d
