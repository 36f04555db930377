"""Text cleaning: markup stripping, normalisation, line/document filters, exact and near dedup.

Every step is a plain function on strings, so each can be tested alone; `clean_documents`
chains them and returns per-step statistics (documents, characters, UTF-8 bytes).
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from typing import Iterable, List, Optional

import numpy as np

from ..errors import KrMiniLlmError
from .utf8 import utf8_len

__all__ = [
    "CleanConfig", "CleanStats", "EmptyCorpusError", "strip_html", "strip_wikitext",
    "normalize_text", "hangul_ratio", "filter_lines", "exact_dedup", "near_dedup",
    "minhash_signatures", "clean_documents", "clean_many", "step_names", "filter_lines_many",
]


class EmptyCorpusError(KrMiniLlmError, ValueError):
    """Raised when nothing is left after reading or cleaning."""


# --------------------------------------------------------------------------- markup
_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "h1", "h2", "h3",
    "h4", "h5", "h6", "pre", "blockquote", "section", "article", "header", "footer", "title",
    "td", "th", "caption", "figcaption", "hr", "nav", "aside", "main",
}
_SKIP_TAGS = {"script", "style", "head", "noscript", "template", "svg", "math", "nav", "aside",
              "button", "header", "footer", "select", "input"}
_VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "wbr", "source"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS and tag not in _VOID_TAGS:
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS and tag not in _VOID_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """HTML -> text: drops script/style/head/navigation, block elements become line breaks."""
    p = _TextExtractor()
    p.feed(text)
    p.close()
    return "".join(p.parts)


_WIKI_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>", re.I), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.I | re.S), ""),
    (re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source)[^>]*>.*?</\1>", re.I | re.S), ""),
    (re.compile(r"\[\[(?:파일|그림|File|Image|분류|Category)\s*:[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]"), r"\1"),          # [[target|label]] -> label
    (re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]"), r"\1"),      # [url label] -> label
    (re.compile(r"'{2,5}"), ""),                                          # bold/italic
    (re.compile(r"^\s*=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),                # == heading ==
    (re.compile(r"^[*#:;]+\s*", re.M), ""),                               # list markers
    (re.compile(r"<[^>]+>"), ""),                                         # remaining tags
    (re.compile(r"__[A-Z]+__"), ""),                                      # magic words
]


def _drop_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced (possibly nested) open_ ... close spans, e.g. templates {{...}}."""
    out, depth, i, n = [], 0, 0, len(text)
    while i < n:
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def strip_wikitext(text: str) -> str:
    """MediaWiki markup -> plain text (templates, tables, refs, files, links, emphasis)."""
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    for pat, rep in _WIKI_PATTERNS:
        text = pat.sub(rep, text)
    return html.unescape(text)


# ----------------------------------------------------------------------- normalise
# Control/format characters other than \n and \t, the replacement character left by invalid
# UTF-8, zero-width characters and BOMs are removed; exotic spaces become a plain space.
_DROP_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufffd]")
_SPACE = "[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
# a whitespace run -> one space. A lone plain space (most of them) is not matched, rather than
# replaced by itself: the run goes on, or the character just read is not " "
_SPACE_RE = re.compile(f"{_SPACE}(?:{_SPACE}+|(?<! ))")


def normalize_text(text: str) -> str:
    """NFC (Hangul stays/becomes precomposed), control chars removed, whitespace collapsed,
    lines stripped, empty lines dropped. Paragraphs stay one per line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACE_RE.sub(" ", _DROP_RE.sub("", text))     # _SPACE_RE never spans a line break
    lines = (line.strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# Hangul syllables, Jamo and compatibility Jamo: every assigned code point here is a letter.
_HANGUL_RE = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e]")


def hangul_ratio(line: str) -> float:
    """Fraction of the letters (str.isalpha) in `line` that are Hangul; 0.0 without letters."""
    letters = sum(map(str.isalpha, line))
    if not letters:
        return 0.0
    return len(_HANGUL_RE.findall(line)) / letters


_BMP_CLASS = None      # per BMP code point: bit 0 = str.isalpha, bit 1 = Hangul


def _char_class(cps: np.ndarray) -> np.ndarray:
    global _BMP_CLASS
    if _BMP_CLASS is None:
        t = np.array([chr(c).isalpha() for c in range(0x10000)], np.uint8)
        for lo, hi in ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3131, 0x318E)):
            t[lo:hi + 1] |= 2
        _BMP_CLASS = t
    out = _BMP_CLASS[np.minimum(cps, 0xFFFF)]
    astral = np.flatnonzero(cps > 0xFFFF)
    if len(astral):
        out[astral] = [chr(c).isalpha() for c in cps[astral].tolist()]
    return out


_LINE_PIECE = 1 << 20      # characters classified at once: bounds the arrays of a long text


def _pieces(texts: List[str]):
    """The texts joined by line breaks, as (piece, whether its last line goes on in the next
    piece): short texts joined into pieces of about _LINE_PIECE characters, a longer one sliced."""
    group: List[str] = []
    size = 0
    for t in texts:
        if len(t) > _LINE_PIECE:
            if group:
                yield "\n".join(group), False
                group, size = [], 0
            for i in range(0, len(t), _LINE_PIECE):
                yield t[i:i + _LINE_PIECE], i + _LINE_PIECE < len(t)
            continue
        group.append(t)
        size += len(t) + 1
        if size >= _LINE_PIECE:
            yield "\n".join(group), False
            group, size = [], 0
    if group:
        yield "\n".join(group), False


def _piece_counts(piece: str, classes: bool) -> np.ndarray:
    """[3, lines] characters, letters and Hangul letters of each line of `piece` (from prefix
    sums over the code points; letters and Hangul only when `classes`)."""
    cps = np.frombuffer(piece.encode("utf-32-le", errors="surrogatepass"), np.uint32)
    bounds = np.r_[-1, np.flatnonzero(cps == 10), len(cps)]     # line i: bounds[i]+1 .. bounds[i+1]
    start, end = bounds[:-1] + 1, bounds[1:]
    out = np.zeros((3, len(start)), np.int64)
    out[0] = end - start
    if classes:
        cls = _char_class(cps)
        for row, bits in ((1, cls & 1), (2, cls >> 1)):
            prefix = np.zeros(len(cps) + 1, np.int64)
            np.add.accumulate(bits, dtype=np.int64, out=prefix[1:])
            out[row] = prefix[end] - prefix[start]
    return out


def _keep_lines(texts: List[str], min_line_chars: int, min_hangul_ratio: float) -> np.ndarray:
    """Per line of the texts (in order): at least `min_line_chars` characters and hangul_ratio >=
    threshold. Memory: the per-line counts plus one piece's arrays, whatever a text's length."""
    counts: List[np.ndarray] = []
    carry = None                         # counts of a line that goes on in the next piece
    for piece, more in _pieces(texts):
        c = _piece_counts(piece, min_hangul_ratio > 0)
        if carry is not None:
            c[:, 0] += carry
        carry = c[:, -1].copy() if more else None
        counts.append(c[:, :-1] if more else c)
    chars, letters, hangul = np.concatenate(counts, axis=1) if counts else np.zeros((3, 0), np.int64)
    keep = chars >= min_line_chars
    if min_hangul_ratio > 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = hangul / letters
        keep &= (letters > 0) & (ratio >= min_hangul_ratio)
    return keep


def filter_lines(text: str, min_line_chars: int = 5, min_hangul_ratio: float = 0.3) -> str:
    """Keep lines with at least `min_line_chars` characters and a Hangul ratio >= threshold."""
    return filter_lines_many([text], min_line_chars, min_hangul_ratio)[0]


def filter_lines_many(texts: List[str], min_line_chars: int = 5, min_hangul_ratio: float = 0.3) -> List[str]:
    """filter_lines of many texts in one vectorised pass (a text whose lines all stay is not copied)."""
    keep = _keep_lines(texts, min_line_chars, min_hangul_ratio)
    out, pos = [], 0
    for t in texts:
        n = t.count("\n") + 1
        k = keep[pos:pos + n]
        pos += n
        if k.all():
            out.append(t)
        elif not k.any():
            out.append("")
        else:
            out.append("\n".join(ln for ln, kk in zip(t.split("\n"), k.tolist()) if kk))
    return out


# ---------------------------------------------------------------------------- dedup
def exact_dedup(docs: Iterable[str]) -> List[str]:
    """First occurrence of each distinct document (by hash of the normalised text)."""
    from .dedup import ExactDupIndex, doc_hash
    docs = list(docs)
    keys = np.fromiter((doc_hash(d) for d in docs), np.uint64, len(docs))
    mask = ExactDupIndex().keep(keys)
    return [d for d, k in zip(docs, mask) if k]


def minhash_signatures(docs: List[str], num_perm: int = 64, shingle: int = 5, seed: int = 0) -> np.ndarray:
    """[len(docs), num_perm] MinHash signatures (multiply-shift hashing of character shingles)."""
    from .dedup import MinHasher
    return MinHasher(num_perm, shingle, seed)(docs)


def near_dedup(docs: List[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16,
               shingle: int = 5, seed: int = 0) -> List[str]:
    """Drop documents whose estimated Jaccard similarity (character `shingle`-grams) with an
    earlier kept document is >= threshold. LSH with `bands` bands finds candidate pairs."""
    from .dedup import NearDupIndex
    docs = list(docs)
    index = NearDupIndex(threshold, num_perm, bands)
    try:
        mask = index.keep(minhash_signatures(docs, num_perm, shingle, seed))
    finally:
        index.close()
    return [d for d, k in zip(docs, mask) if k]


# ------------------------------------------------------------------------- pipeline
@dataclass
class CleanConfig:
    min_line_chars: int = 5          # shorter lines (menu labels, bare numbers) are dropped
    min_hangul_ratio: float = 0.3    # Hangul share of a line's letters; 0 disables the filter
    min_doc_chars: int = 100         # documents shorter than this after line filtering are dropped
    dedup: bool = True               # exact duplicates by hash
    near_dedup: bool = True          # MinHash near-duplicates
    near_dup_threshold: float = 0.8  # estimated Jaccard of character 5-grams

    def to_dict(self):
        return asdict(self)


@dataclass
class CleanStats:
    """Per-step counts: list of (step, documents, characters, bytes)."""
    steps: list = field(default_factory=list)

    def add(self, step: str, docs: List[str]):
        self.steps.append((step, len(docs), sum(map(len, docs)), sum(map(utf8_len, docs))))

    def table(self) -> str:
        lines = [f"{'step':<28}{'docs':>9}{'chars':>13}{'MB':>9}"]
        for s, n, c, b in self.steps:
            lines.append(f"{s:<28}{n:>9,}{c:>13,}{b / 1e6:>9.2f}")
        return "\n".join(lines)

    def to_list(self):
        return [dict(step=s, documents=n, chars=c, bytes=b) for s, n, c, b in self.steps]

    def check(self):
        """EmptyCorpusError naming the first step that left nothing."""
        if not self.steps or not self.steps[0][1]:
            raise EmptyCorpusError("no documents were read from the input")
        for name, n, _, _ in self.steps:
            if not n:
                raise EmptyCorpusError(
                    f"no text left after '{name}' (started with {self.steps[0][1]} documents); "
                    f"relax the filters (--min_hangul_ratio, --min_line_chars, --min_doc_chars) or check the input\n"
                    + self.table())


def step_names(cfg: CleanConfig) -> List[str]:
    """The rows of CleanStats, in order."""
    names = ["input (markup stripped)", "normalize (NFC, whitespace)",
             f"lines >= {cfg.min_line_chars} chars, hangul >= {cfg.min_hangul_ratio:g}",
             f"documents >= {cfg.min_doc_chars} chars"]
    if cfg.dedup:
        names.append("exact dedup")
    if cfg.near_dedup:
        names.append(f"near dedup (J >= {cfg.near_dup_threshold:g})")
    return names


def clean_many(texts: List[str], cfg: CleanConfig):
    """The per-document steps on a batch: (kept texts, [4, 3] counts of documents, characters
    and UTF-8 bytes after input / normalize / line filters / minimum length)."""
    counts = np.zeros((4, 3), np.int64)

    def count(row, docs):
        counts[row] += (len(docs), sum(map(len, docs)), sum(map(utf8_len, docs)))

    count(0, texts)
    docs = [t for t in map(normalize_text, texts) if t]
    count(1, docs)
    docs = [t for t in filter_lines_many(docs, cfg.min_line_chars, cfg.min_hangul_ratio) if t] if docs else []
    count(2, docs)
    docs = [d for d in docs if len(d) >= cfg.min_doc_chars]
    count(3, docs)
    return docs, counts


def clean_documents(docs: Iterable[str], cfg: Optional[CleanConfig] = None,
                    stats: Optional[CleanStats] = None) -> List[str]:
    """Normalise -> line filters -> min doc length -> exact dedup -> near dedup, in memory (the
    streaming, multi-process version is kr_mini_llm.data.pipeline.prepare_text).
    Raises EmptyCorpusError (naming the step) when nothing is left."""
    cfg = cfg or CleanConfig()
    stats = stats if stats is not None else CleanStats()
    out, counts = clean_many(list(docs), cfg)
    names = step_names(cfg)
    for name, c in zip(names, counts.tolist()):
        stats.steps.append((name, *c))
    if cfg.dedup:
        out = exact_dedup(out)
        stats.add(names[len(stats.steps)], out)
    if cfg.near_dedup:
        out = near_dedup(out, cfg.near_dup_threshold)
        stats.add(names[len(stats.steps)], out)
    stats.check()
    return out
