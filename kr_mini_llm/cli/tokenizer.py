"""Train the SentencePiece tokenizer (BPE by default) with the project's special tokens.

  python scripts/train_tokenizer.py --input data/processed/train.txt --vocab_size 32000 --output models/tokenizer

Writes <output>.model and <output>.vocab (models/tokenizer.model). Fixed ids: <pad>=0 <unk>=1
<s>=2 </s>=3 <|im_start|>=4 <|im_end|>=5; byte fallback; Korean character coverage 0.9995.
--pretokenize kiwi keeps pieces inside morphemes (Kiwi marks the training text; encoding needs no Kiwi).
--input takes the same inputs as prepare_data.py (.txt, .jsonl, dumps): inputs other than plain
UTF-8 .txt files (other formats, other encodings: CP949/EUC-KR, UTF-16, ...) are read, decoded and
normalised into a temporary text file first; a file whose encoding cannot be told is an error. When done, reports the tokenizer's
figures (chars and bytes per token, byte-fallback share, unknown pieces: the same as
scripts/evaluate.py's) on --valid (default: valid.txt beside the first --input, else
data/processed/valid.txt, when it exists).
"""
import argparse
import tempfile
import time
from pathlib import Path

from ..errors import KrMiniLlmError
from ..data.readers import InputError, ReadStats, expand_inputs, read_documents
from ..data.cleaning import normalize_text
from ..data.encoding import is_plain_utf8
from ..data.morphemes import PRETOKENIZERS
from ..data.tokenizer import Tokenizer, train_tokenizer
from ..eval.tokenizer_stats import format_tokenizer_stats, tokenizer_stats
from ..io.outputs import add_overwrite_flag, claim_output
from .command import command
from .prepare import ENCODING_HELP, encoding_arg


def default_valid(inputs) -> Path:
    beside = Path(inputs[0]).parent / "valid.txt"
    return beside if beside.is_file() else Path("data/processed/valid.txt")


def build_parser(prog=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", default=["data/processed/train.txt"])
    ap.add_argument("--vocab_size", type=int, default=32000)
    ap.add_argument("--output", default="models/tokenizer", help="output prefix: writes <output>.model/.vocab")
    ap.add_argument("--model_type", choices=["bpe", "unigram"], default="bpe")
    ap.add_argument("--pretokenize", choices=PRETOKENIZERS, default="none",
                    help="kiwi: pieces never cross a morpheme boundary that Kiwi (pip install kiwipiepy) finds in "
                         "the training text; encoding needs no Kiwi (scripts/bench_tokenizer.py measures it)")
    ap.add_argument("--character_coverage", type=float, default=0.9995)
    ap.add_argument("--input_sentence_size", type=int, default=2_000_000, help="lines sampled for training")
    ap.add_argument("--num_threads", type=int, default=None)
    ap.add_argument("--valid", default=None, help="text file to report compression on")
    ap.add_argument("--text_field", default="text")
    ap.add_argument("--encoding", type=encoding_arg, default=None, help=ENCODING_HELP)
    add_overwrite_flag(ap)
    return ap


@command(FileNotFoundError, ValueError, RuntimeError, OSError)  # sentencepiece's errors for a bad input
def main(argv=None, prog=None) -> int:
    a = build_parser(prog).parse_args(argv)
    tmp = None
    try:
        prefix = a.output[:-len(".model")] if a.output.endswith(".model") else a.output
        claim_output(prefix + ".model", also=[prefix + ".vocab"], is_dir=False, overwrite=a.overwrite,
                     inputs=[*a.input, a.valid])
        files = expand_inputs(a.input)
        # SentencePiece reads UTF-8 only: anything else goes through the readers, which decode it
        if a.encoding or not all(isinstance(f, Path) and f.name.endswith(".txt") and is_plain_utf8(f) for f in files):
            tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
            stats = ReadStats()
            with tmp:
                for doc in read_documents(files, text_field=a.text_field, stats=stats, encoding=a.encoding):
                    t = normalize_text(doc.text)
                    if t:
                        tmp.write(t + "\n")
            print(stats.summary())
            files = [Path(tmp.name)]
        t0 = time.perf_counter()
        model = train_tokenizer(files, a.vocab_size, a.output, model_type=a.model_type,
                                character_coverage=a.character_coverage,
                                input_sentence_size=a.input_sentence_size, num_threads=a.num_threads,
                                pretokenize=a.pretokenize)
    finally:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
    tok = Tokenizer(model)
    kind = a.model_type + (f", {a.pretokenize} pre-tokenization" if a.pretokenize != "none" else "")
    print(f"wrote {model} and {model.with_suffix('.vocab')}: {kind}, vocab {tok.vocab_size}, "
          f"fingerprint {tok.fingerprint}, {time.perf_counter() - t0:.1f} s")
    valid = Path(a.valid) if a.valid else default_valid(a.input)
    if valid.is_file():
        try:        # decoded like the inputs (a CP949 --valid too)
            lines = [ln for d in read_documents([valid], encoding=a.encoding) for ln in d.text.split("\n") if ln]
        except (InputError, ValueError) as e:
            raise KrMiniLlmError(f"--valid: {e}") from None
        print(f"{valid}: {format_tokenizer_stats(tokenizer_stats(tok, lines))}")
    elif a.valid:
        raise KrMiniLlmError(f"--valid {a.valid!r} not found")
    return 0
