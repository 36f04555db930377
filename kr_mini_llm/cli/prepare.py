"""Prepare Korean training data.

  python scripts/prepare_data.py                        # default corpus (Debian packages) -> data/processed/
  python scripts/prepare_data.py --input my/*.txt wiki.xml.bz2 corpus.jsonl
  python scripts/prepare_data.py --tokenizer models/tokenizer.model   # + token shards in data/tokens/

Stage 1 (text): obtain/read -> strip markup -> NFC, whitespace -> line filters (length,
Hangul ratio) -> minimum document length -> exact and near dedup -> split by document (a hash
of each document and the seed; valid and test ~192 KB each, 1-5%) -> data/processed/{train,valid,test}.txt.
Stage 2 (--tokenizer): token shards + meta.json in data/tokens/. Both stream (memory does not
grow with the corpus) and use every core (--num_proc); --engine dask runs the text stage's
workers on a Dask cluster (docs/data.md). Reruns skip finished work (--force redoes it).
Each text file's encoding is found (UTF-8, CP949/EUC-KR, UTF-16, Johab; --encoding names it) and
listed when not UTF-8; a file whose encoding cannot be told is an error. A failed run leaves its
outputs as they were.
"""
import argparse

from ..data.cleaning import CleanConfig
from ..data.parallel import ENGINES
from ..data.pipeline import DEFAULT_MAX_MEMORY_MB
from ..data.encoding import EncodingError, check_encoding
from ..data.sources import DEFAULT_SOURCES, SOURCES
from ..data.split import parse_ratios
from ..io.outputs import add_overwrite_flag
from .command import command


ENCODING_HELP = ("text encoding of every input file, e.g. cp949 (default: found per file: BOM, UTF-8, "
                 "else CP949/EUC-KR, UTF-16 or Johab)")


def encoding_arg(name: str) -> str:
    """argparse type of --encoding: an encoding Python knows."""
    try:
        return check_encoding(name)
    except EncodingError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(prog=None) -> argparse.ArgumentParser:
    d = CleanConfig()
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("corpus")
    src.add_argument("--input", nargs="+", help="bring-your-own corpus: .txt files/dirs/globs, .jsonl, "
                     "*.xml.bz2 Wikipedia dump, wikiextractor output, hf:NAME[:CONFIG][:SPLIT]")
    src.add_argument("--source", default=",".join(DEFAULT_SOURCES),
                     help=f"Debian packages for the default corpus, comma-separated (known: {', '.join(SOURCES)})")
    src.add_argument("--text_field", default="text", help="JSONL / HF field holding the text")
    src.add_argument("--encoding", type=encoding_arg, default=None, help=ENCODING_HELP)
    src.add_argument("--raw_dir", default="data/raw", help="download cache and extracted text (+ licence files)")
    cl = ap.add_argument_group("cleaning")
    cl.add_argument("--min_line_chars", type=int, default=d.min_line_chars)
    cl.add_argument("--min_hangul_ratio", type=float, default=d.min_hangul_ratio,
                    help="drop lines whose letters are less Hangul than this (0 disables)")
    cl.add_argument("--min_doc_chars", type=int, default=d.min_doc_chars)
    cl.add_argument("--no_dedup", action="store_true", help="skip exact deduplication")
    cl.add_argument("--no_near_dedup", action="store_true", help="skip MinHash near-duplicate removal")
    cl.add_argument("--near_dup_threshold", type=float, default=d.near_dup_threshold)
    sp = ap.add_argument_group("split and output")
    sp.add_argument("--split", default="auto", help="train/valid/test proportions, e.g. 98/1/1; auto: valid and "
                    "test each get ~192 KB of the input, between 1%% and 5%% of it")
    sp.add_argument("--seed", type=int, default=1234, help="split seed")
    sp.add_argument("--output_dir", default="data/processed")
    tk = ap.add_argument_group("token shards")
    tk.add_argument("--tokenizer", help="SentencePiece model (e.g. models/tokenizer.model): also write token shards")
    tk.add_argument("--tokens_dir", default="data/tokens")
    tk.add_argument("--num_proc", type=int, default=None,
                    help="worker processes of both stages (default: all cores)")
    tk.add_argument("--shard_size_mb", type=float, default=64.0, help="text per shard (MB)")
    ex = ap.add_argument_group("execution (the output does not depend on these)")
    ex.add_argument("--max_memory_mb", type=float, default=DEFAULT_MAX_MEMORY_MB,
                    help="budget for the batches in flight in the text stage (dedup state comes on top: "
                         "~136 bytes per kept document)")
    ex.add_argument("--engine", choices=ENGINES, default="local",
                    help="text-stage workers: local processes, or a Dask cluster")
    ex.add_argument("--engine_address", help="Dask scheduler address (tcp://host:8786); default: a local cluster")
    ap.add_argument("--force", action="store_true", help="redo work even when outputs are up to date")
    add_overwrite_flag(ap)
    ap.add_argument("--no_progress", action="store_true")
    return ap


@command(FileNotFoundError, ValueError, ImportError)
def main(argv=None, prog=None) -> int:
    a = build_parser(prog).parse_args(argv)

    from ..data.pipeline import prepare_text, tokenize_splits
    from ..data.tokenizer import Tokenizer

    cfg = CleanConfig(a.min_line_chars, a.min_hangul_ratio, a.min_doc_chars, not a.no_dedup,
                      not a.no_near_dedup, a.near_dup_threshold)
    if a.tokenizer:
        Tokenizer(a.tokenizer)       # a bad --tokenizer fails before anything is written
    prepare_text(inputs=a.input, sources=[s for s in a.source.split(",") if s], raw_dir=a.raw_dir,
                 out_dir=a.output_dir, clean=cfg, ratios=parse_ratios(a.split), seed=a.seed,
                 text_field=a.text_field, force=a.force, num_proc=a.num_proc, max_memory_mb=a.max_memory_mb,
                 engine=a.engine, engine_address=a.engine_address, encoding=a.encoding,
                 overwrite=a.overwrite)
    if a.tokenizer:
        tokenize_splits(a.tokenizer, a.output_dir, a.tokens_dir, num_proc=a.num_proc,
                        shard_size_mb=a.shard_size_mb, force=a.force, progress=not a.no_progress,
                        overwrite=a.overwrite)
    return 0
