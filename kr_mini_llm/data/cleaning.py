"""Text cleaning: markup stripping, normalisation, line/document filters, exact and near dedup.

Every step is a plain function on strings, so each can be tested alone; `clean_documents`
chains them and returns per-step statistics (documents, characters, UTF-8 bytes).
"""
from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from typing import Iterable, List, Optional

import numpy as np

__all__ = [
    "CleanConfig", "CleanStats", "EmptyCorpusError", "strip_html", "strip_wikitext",
    "normalize_text", "hangul_ratio", "filter_lines", "exact_dedup", "near_dedup",
    "minhash_signatures", "clean_documents",
]


class EmptyCorpusError(ValueError):
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
_SPACE_RE = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")


def normalize_text(text: str) -> str:
    """NFC (Hangul stays/becomes precomposed), control chars removed, whitespace collapsed,
    lines stripped, empty lines dropped. Paragraphs stay one per line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _DROP_RE.sub("", text)
    lines = (_SPACE_RE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _is_hangul(c: str) -> bool:
    o = ord(c)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


def hangul_ratio(line: str) -> float:
    """Fraction of the letters (str.isalpha) in `line` that are Hangul; 0.0 without letters."""
    letters = [c for c in line if c.isalpha()]
    if not letters:
        return 0.0
    return sum(map(_is_hangul, letters)) / len(letters)


def filter_lines(text: str, min_line_chars: int = 5, min_hangul_ratio: float = 0.3) -> str:
    """Keep lines with at least `min_line_chars` characters and a Hangul ratio >= threshold."""
    keep = [ln for ln in text.split("\n")
            if len(ln) >= min_line_chars and (min_hangul_ratio <= 0 or hangul_ratio(ln) >= min_hangul_ratio)]
    return "\n".join(keep)


# ---------------------------------------------------------------------------- dedup
def _doc_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def exact_dedup(docs: Iterable[str]) -> List[str]:
    """First occurrence of each distinct document (by hash of the normalised text)."""
    seen, out = set(), []
    for d in docs:
        k = _doc_key(d)
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out


_MERSENNE = np.uint64((1 << 61) - 1)


def _shingle_hashes(text: str, k: int) -> np.ndarray:
    """Distinct 64-bit polynomial hashes of the character k-grams of `text` (whitespace removed)."""
    cps = np.frombuffer("".join(text.split()).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) < k:
        cps = np.concatenate([cps, np.zeros(k - len(cps), np.uint64)])
    h = np.zeros(len(cps) - k + 1, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):  # wrap-around uint64 arithmetic is the hash
            h = h * np.uint64(1_000_003) + cps[j:len(cps) - k + 1 + j]
    return np.unique(h)


def minhash_signatures(docs: List[str], num_perm: int = 64, shingle: int = 5, seed: int = 0) -> np.ndarray:
    """[len(docs), num_perm] MinHash signatures (multiply-shift hashing of character shingles)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 62, num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 62, num_perm, dtype=np.uint64)
    sig = np.empty((len(docs), num_perm), np.uint64)
    with np.errstate(over="ignore"):
        for i, d in enumerate(docs):
            sh = _shingle_hashes(d, shingle)
            sig[i] = ((sh[None, :] * a[:, None] + b[:, None]) >> np.uint64(32)).min(axis=1)
    return sig


def near_dedup(docs: List[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16,
               shingle: int = 5, seed: int = 0) -> List[str]:
    """Drop documents whose estimated Jaccard similarity (character `shingle`-grams) with an
    earlier kept document is >= threshold. LSH with `bands` bands finds candidate pairs."""
    if len(docs) < 2:
        return list(docs)
    if num_perm % bands:
        raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
    sig = minhash_signatures(docs, num_perm, shingle, seed)
    rows = num_perm // bands
    buckets = [dict() for _ in range(bands)]
    kept_idx: List[int] = []
    for i in range(len(docs)):
        keys = [sig[i, bnd * rows:(bnd + 1) * rows].tobytes() for bnd in range(bands)]
        cands = set()
        for bnd, key in enumerate(keys):
            cands.update(buckets[bnd].get(key, ()))
        if any(np.mean(sig[i] == sig[j]) >= threshold for j in cands):
            continue
        kept_idx.append(i)
        for bnd, key in enumerate(keys):
            buckets[bnd].setdefault(key, []).append(i)
    return [docs[i] for i in kept_idx]


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
        self.steps.append((step, len(docs), sum(map(len, docs)), sum(len(d.encode("utf-8")) for d in docs)))

    def table(self) -> str:
        lines = [f"{'step':<28}{'docs':>9}{'chars':>13}{'MB':>9}"]
        for s, n, c, b in self.steps:
            lines.append(f"{s:<28}{n:>9,}{c:>13,}{b / 1e6:>9.2f}")
        return "\n".join(lines)

    def to_list(self):
        return [dict(step=s, documents=n, chars=c, bytes=b) for s, n, c, b in self.steps]


def clean_documents(docs: Iterable[str], cfg: Optional[CleanConfig] = None,
                    stats: Optional[CleanStats] = None) -> List[str]:
    """Normalise -> line filters -> min doc length -> exact dedup -> near dedup.
    Raises EmptyCorpusError (naming the step) when nothing is left."""
    cfg = cfg or CleanConfig()
    stats = stats if stats is not None else CleanStats()
    docs = list(docs)
    stats.add("input (markup stripped)", docs)
    if not docs:
        raise EmptyCorpusError("no documents were read from the input")

    def step(name, new):
        stats.add(name, new)
        if not new:
            raise EmptyCorpusError(
                f"no text left after '{name}' (started with {stats.steps[0][1]} documents); "
                f"relax the filters (--min_hangul_ratio, --min_line_chars, --min_doc_chars) or check the input\n"
                + stats.table())
        return new

    docs = step("normalize (NFC, whitespace)", [t for t in map(normalize_text, docs) if t])
    docs = step(f"lines >= {cfg.min_line_chars} chars, hangul >= {cfg.min_hangul_ratio:g}",
                [t for t in (filter_lines(d, cfg.min_line_chars, cfg.min_hangul_ratio) for d in docs) if t])
    docs = step(f"documents >= {cfg.min_doc_chars} chars", [d for d in docs if len(d) >= cfg.min_doc_chars])
    if cfg.dedup:
        docs = step("exact dedup", exact_dedup(docs))
    if cfg.near_dedup:
        docs = step(f"near dedup (J >= {cfg.near_dup_threshold:g})", near_dedup(docs, cfg.near_dup_threshold))
    return docs
