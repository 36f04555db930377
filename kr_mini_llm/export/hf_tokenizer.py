"""The tokenizer files of a HF export: what `AutoTokenizer.from_pretrained` loads (without protobuf)
and llama.cpp's convert_hf_to_gguf.py reads.

    tokenizer.model          our SentencePiece model, as it is
    tokenizer.json           the same tokenizer for HF `tokenizers`: BPE over our pieces, merges
                             ranked by piece score (how SentencePiece's BPE merges), byte fallback,
                             spaces as "▁" with no dummy prefix, BOS added in front
    tokenizer_config.json    special tokens, add_bos_token, add_prefix_space=false, chat template
    special_tokens_map.json  the special tokens again, for older readers
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List, Tuple

from ..io import layout
from .tokenizer_meta import TokenKind, TokenizerMeta

SPACE = "\u2581"   # SentencePiece's "▁"


def _merges(meta: TokenizerMeta) -> List[Tuple[str, str]]:
    """Every split (a, b) of a normal piece into two pieces, the higher the piece's score the earlier."""
    vocab = {p: i for i, (p, k) in enumerate(zip(meta.pieces, meta.kinds)) if k == TokenKind.NORMAL}
    ranked = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                ranked.append((-meta.scores[i], i, vocab[a], vocab[b], a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def build_hf_tokenizer(meta: TokenizerMeta):
    """A `tokenizers.Tokenizer` that encodes as our SentencePiece model does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab = {p: i for i, p in enumerate(meta.pieces)}
    bpe = models.BPE(vocab=vocab, merges=_merges(meta), unk_token=meta.pieces[meta.unk_id],
                     byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    bos = meta.pieces[meta.bos_id]
    if meta.add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, meta.bos_id)])
    specials = sorted(meta.special_tokens.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _ in specials])
    return tok


def tokenizer_config(meta: TokenizerMeta, max_length: int) -> dict:
    p = meta.pieces
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": p[meta.bos_id], "eos_token": p[meta.eos_id], "unk_token": p[meta.unk_id],
        "pad_token": p[meta.pad_id],
        "additional_special_tokens": [p[meta.im_start_id], p[meta.im_end_id]],
        "add_bos_token": meta.add_bos, "add_eos_token": meta.add_eos, "add_prefix_space": meta.add_space_prefix,
        "legacy": False, "clean_up_tokenization_spaces": False, "model_max_length": max_length,
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "normalized": False, "lstrip": False,
                                          "rstrip": False, "single_word": False}
                                 for t, i in sorted(meta.special_tokens.items(), key=lambda kv: kv[1])},
        "chat_template": meta.chat_template,
    }


def write_hf_tokenizer(meta: TokenizerMeta, sp_model: Path, out: Path, max_length: int) -> None:
    """Writes the tokenizer files into the directory `out` (which the caller renames into place)."""
    shutil.copyfile(sp_model, out / layout.TOKENIZER)
    build_hf_tokenizer(meta).save(str(out / "tokenizer.json"))
    config = tokenizer_config(meta, max_length)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
