"""SentencePiece tokenizer: training with the project's fixed special tokens, and `Tokenizer`.

Fixed ids (the model config defaults rely on them):
  pad=0 <pad>, unk=1 <unk>, bos=2 <s>, eos=3 </s>, 4 <|im_start|>, 5 <|im_end|>
Training uses byte fallback (no unknown characters), no text normalisation (the cleaner
already did NFC) and no dummy prefix / whitespace collapsing.

`Tokenizer.encode` is the one entrance every text goes through on its way to the model
(prompts, `Generator.generate`/`chat`, the chat template, SFT/LoRA data, token shards, the
server): it normalises to Unicode NFC there, so decomposed input (NFD jamo, as macOS file
names and some input methods give) gets the ids the model was trained on. Hence
encode(nfd) == encode(nfc) and decode(encode(s)) == NFC(s) for any string s. SentencePiece
writes spaces as U+2581 "▁" inside pieces, so a literal "▁" in the text is encoded as its
three byte pieces (else it would decode as a space). With `special_tokens=False` the strings
"<|im_start|>"/"<|im_end|>" stay text too (byte pieces, never the control ids): the chat
template encodes message contents that way. Encodings of consecutive pieces of NFC text
concatenate (the chat template relies on that).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import unicodedata
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import KrMiniLlmError
from ..io import layout

__all__ = ["Tokenizer", "TokenizerError", "train_tokenizer", "SPECIAL_TOKENS", "IM_START", "IM_END",
           "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "IM_START_ID", "IM_END_ID", "file_fingerprint"]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = 0, 1, 2, 3, 4, 5
_SPACE_MARK = "\u2581"   # SentencePiece's meta symbol for a space
SPECIAL_TOKENS = {"<pad>": PAD_ID, "<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID,
                  IM_START: IM_START_ID, IM_END: IM_END_ID}


class TokenizerError(KrMiniLlmError, ValueError):
    """Missing or invalid tokenizer model file."""


def file_fingerprint(path: Union[str, os.PathLike]) -> str:
    """Short hex sha256 of a file (16 hex digits)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _resolve_model_path(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / layout.TOKENIZER
    elif not p.exists() and p.suffix != ".model" and Path(str(p) + ".model").exists():
        p = Path(str(p) + ".model")     # the --output prefix of train_tokenizer.py
    if not p.is_file():
        raise TokenizerError(f"tokenizer model not found: {str(path)!r}; train one with "
                             f"`python scripts/train_tokenizer.py --input data/processed/train.txt "
                             f"--vocab_size 32000 --output models/tokenizer`")
    return p


class Tokenizer:
    """SentencePiece model wrapper. `Tokenizer("models/tokenizer.model")` (or the prefix
    "models/tokenizer", or a directory holding tokenizer.model)."""

    def __init__(self, path: Union[str, os.PathLike], num_threads: int = -1):
        import sentencepiece as spm

        self.path = _resolve_model_path(path)
        data = self.path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(data)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
            raise TokenizerError(f"{str(self.path)!r} is not a valid SentencePiece model: {e}") from None
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
        self.num_threads = num_threads
        self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.im_start_id, self.im_end_id = self.sp.piece_to_id(IM_START), self.sp.piece_to_id(IM_END)
        if self.im_start_id == self.unk_id or self.im_end_id == self.unk_id:
            raise TokenizerError(f"{str(self.path)!r} has no {IM_START}/{IM_END} tokens; "
                                 "train it with scripts/train_tokenizer.py")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: Union[str, Sequence[str]], add_bos: bool = False, add_eos: bool = False,
               special_tokens: bool = True):
        """str -> list[int]; list of str -> list[list[int]] (encoded by sentencepiece's threads).

        The text is normalised to NFC first (see the module doc). special_tokens=False keeps
        "<|im_start|>"/"<|im_end|>" written in the text as text instead of the control ids."""
        if isinstance(text, str):
            return self._encode_one(text, add_bos, add_eos, special_tokens)
        texts = [unicodedata.normalize("NFC", t) for t in text]
        plain = [not self._needs_split(t, special_tokens) for t in texts]
        out = self.sp.encode([t for t, p in zip(texts, plain) if p], add_bos=add_bos, add_eos=add_eos,
                             num_threads=self.num_threads)
        it = iter(out)
        return [next(it) if p else self._encode_one(t, add_bos, add_eos, special_tokens)
                for t, p in zip(texts, plain)]

    @staticmethod
    def _needs_split(text: str, special_tokens: bool) -> bool:
        return _SPACE_MARK in text or not special_tokens and (IM_START in text or IM_END in text)

    def _encode_one(self, text: str, add_bos: bool, add_eos: bool, special_tokens: bool):
        text = unicodedata.normalize("NFC", text)
        if not self._needs_split(text, special_tokens):
            return self.sp.encode(text, add_bos=add_bos, add_eos=add_eos)
        # Literal "▁" (and, with special_tokens=False, the role markers): their UTF-8 bytes as
        # byte pieces; the text between them as usual.
        literals = [_SPACE_MARK] + ([] if special_tokens else [IM_START, IM_END])
        ids = [self.bos_id] if add_bos else []
        for part in re.split("(" + "|".join(map(re.escape, literals)) + ")", text):
            if part in literals:
                ids.extend(self.sp.piece_to_id(f"<0x{b:02X}>") for b in part.encode("utf-8"))
            elif part:
                ids.extend(self.sp.encode(part))
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids):
        """list[int] -> str; list[list[int]] -> list[str]. Accepts numpy arrays / tensors."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if len(ids) and isinstance(ids[0], (list, tuple)) or (len(ids) and hasattr(ids[0], "tolist")):
            return self.sp.decode([list(map(int, x)) for x in ids], num_threads=self.num_threads)
        return self.sp.decode(list(map(int, ids)))

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def __repr__(self):
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"


def train_tokenizer(input_files: Sequence[Union[str, os.PathLike]], vocab_size: int, output_prefix: Union[str, os.PathLike],
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    input_sentence_size: int = 2_000_000, num_threads: Optional[int] = None,
                    seed_sentencepiece_size: int = 1_000_000, max_sentence_length: int = 16384,
                    log_level: int = 1, pretokenize: str = "none") -> Path:
    """Train SentencePiece on text files (one sentence/paragraph per line). Writes
    <output_prefix>.model and .vocab; returns the .model path.

    pretokenize="kiwi": pieces do not cross morpheme boundaries (data/morphemes.py). Kiwi reads the
    lines SentencePiece would sample (input_sentence_size of them, drawn here with a fixed seed) and
    marks them in a training copy; encoding the raw text needs no Kiwi."""
    import sentencepiece as spm

    from .morphemes import DELIMITER, check_pretokenize, kiwi_spans, mark_lines  # training only

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', not {model_type!r}")
    check_pretokenize(pretokenize)
    files = [str(f) for f in input_files]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"tokenizer input not found: {f!r}")
    min_vocab = 256 + len(SPECIAL_TOKENS) + 1
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte fallback needs 256 byte pieces plus "
                         f"{len(SPECIAL_TOKENS)} special tokens (>= {min_vocab})")
    out = Path(output_prefix)
    if out.suffix == ".model":
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Trained beside the target and renamed into place, so a failed run leaves the old files (or none).
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        extra = {}
        if pretokenize == "kiwi":
            spans_of = kiwi_spans(num_threads or os.cpu_count() or 1)  # fails before any work if not installed
            marked = Path(tmp) / "marked.txt"
            with open(marked, "w", encoding="utf-8") as f:
                for line in mark_lines(_sample_lines(files, input_sentence_size), spans_of):
                    f.write(line + "\n")
            files, extra = [str(marked)], {"pretokenization_delimiter": DELIMITER}
        _train_spm(spm, files, Path(tmp) / out.name, vocab_size, model_type, character_coverage, max_sentence_length,
                   input_sentence_size, seed_sentencepiece_size, num_threads, log_level, **extra)
        for suffix in (".vocab", ".model"):   # .model last: it is what a loader looks for
            os.replace(Path(tmp) / (out.name + suffix), Path(str(out) + suffix))
    return Path(str(out) + ".model")


def _sample_lines(files: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """Up to k non-empty lines of the files, a uniform sample (reservoir, fixed seed) when there are more."""
    rng, out, seen = random.Random(seed), [], 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                seen += 1
                if len(out) < k:
                    out.append(line)
                else:
                    j = rng.randrange(seen)
                    if j < k:
                        out[j] = line
    return out


def _train_spm(spm, files, prefix: Path, vocab_size, model_type, character_coverage, max_sentence_length,
               input_sentence_size, seed_sentencepiece_size, num_threads, log_level, **extra) -> None:
    spm.SentencePieceTrainer.train(
        input=files, model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        user_defined_symbols=[IM_START, IM_END],
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads or os.cpu_count() or 1, minloglevel=log_level,
        hard_vocab_limit=model_type != "unigram", **extra,
    )
