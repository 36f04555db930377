"""GGUF for llama.cpp and Ollama, written with the `gguf` package (llama.cpp's own writer).

Architecture: "llama" for a model without QK-norm, "qwen3" with it. Tensor names come from
gguf's map of HF names (ours are HF's without "model."). llama.cpp's "llama" applies RoPE to
interleaved pairs while we (and HF) rotate halves, so Q and K rows are permuted for it, as
llama.cpp's convert_hf_to_gguf.py does; "qwen3" rotates halves like us.

Out types: f32; f16 and bf16 (matrices; norms stay f32, as llama.cpp keeps them); q8_0 and q4_0
(matrices whose rows are a multiple of 32 long, quantised by gguf.quants, every one of them, token
embeddings included, as llama-quantize --pure would; the rest stay f16, and `write_gguf` returns
their names so the caller can say so). gguf.quants has no Q4_K quantizer (dequantize only), so
Q4_K_M is llama-quantize's job on an f32/f16 export.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ..io.atomic import atomic_write
from .errors import ExportError
from .tokenizer_meta import TokenizerMeta

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
MAX_VOCAB = 2**31 - 1   # llama.cpp token ids are int32


@dataclass
class GGUFReport:
    arch: str
    outtype: str
    tensor_types: Dict[str, str] = field(default_factory=dict)
    kept_unquantized: List[str] = field(default_factory=list)   # q8_0/q4_0: matrices whose rows are not 32-multiples


def arch_of(config) -> str:
    return "qwen3" if config.qk_norm else "llama"


def check_gguf_config(config, meta: TokenizerMeta, outtype: str) -> None:
    """Everything that makes a model unrepresentable in GGUF, raised before any file is written."""
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    scaling = config.rope_scaling
    if scaling:
        kind = scaling["type"]
        if kind != "linear":
            raise ExportError(
                f"rope_scaling type {kind!r} has no llama.cpp equivalent that reproduces our model "
                f"({'llama.cpp has no dynamic NTK scaling' if kind == 'ntk' else 'not verified against llama.cpp'}); "
                "only default and linear RoPE scaling export to GGUF")
    if meta.size > config.vocab_size:
        raise ExportError(f"the tokenizer has {meta.size} pieces but the model only {config.vocab_size} embedding "
                          "rows; export the model with the tokenizer it was trained with")
    if config.vocab_size > MAX_VOCAB:
        raise ExportError(f"vocab_size {config.vocab_size} is over llama.cpp's limit of {MAX_VOCAB} (int32 token ids)")


def _permute_for_llama(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # rotate-half rows [h, 2, D/2] -> interleaved pairs [h, D/2, 2] (convert_hf_to_gguf's permute)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch: str):
    """(gguf name, float32 numpy array) in file order."""
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3 if arch == "qwen3" else gguf.MODEL_ARCH.LLAMA,
                                     cfg.num_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        t = t.detach().to(torch.float32).cpu()
        if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            t = _permute_for_llama(t, cfg.num_heads)
        elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            t = _permute_for_llama(t, cfg.num_kv_heads)
        hf_name = name if name.startswith("lm_head.") else "model." + name
        out = names.get_name(hf_name, try_suffixes=(".weight",))
        if out is None:
            raise ExportError(f"no GGUF name for tensor {name!r}")
        yield out, t.numpy()


def _encode(name: str, data: np.ndarray, outtype: str, report: GGUFReport):
    """(array, GGMLQuantizationType) as the file stores it."""
    import gguf

    Q = gguf.GGMLQuantizationType
    quantized = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}.get(outtype)
    if data.ndim == 1 or outtype == "f32":
        qtype = Q.F32
    elif outtype == "f16":
        qtype = Q.F16
    elif outtype == "bf16":
        qtype = Q.BF16
    elif data.shape[-1] % gguf.GGML_QUANT_SIZES[quantized][0] == 0:
        qtype = quantized
    else:
        qtype = Q.F16
        report.kept_unquantized.append(f"{name} (rows of {data.shape[-1]}) as F16")
    report.tensor_types[name] = qtype.name
    if qtype == Q.F32:
        return data, qtype
    if qtype == Q.F16:
        return data.astype(np.float16), qtype
    return gguf.quants.quantize(data, qtype), qtype


def _file_type(outtype: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[outtype]


def _add_metadata(w, config, meta: TokenizerMeta, arch: str, name: str, outtype: str) -> None:
    import gguf

    head_dim = config.resolved_head_dim
    w.add_name(name)
    w.add_file_type(_file_type(outtype))
    w.add_context_length(config.max_seq_length)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(config.rope_theta))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(config.vocab_size)
    if config.rope_scaling:   # check_gguf_config let only linear through
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(config.rope_scaling["factor"]))

    pieces, scores, kinds = list(meta.pieces), list(meta.scores), list(meta.kinds)
    for i in range(meta.size, config.vocab_size):   # embedding rows no piece uses
        pieces.append(f"[PAD{i}]")
        scores.append(-1000.0)
        kinds.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")          # SentencePiece: merges by piece score, byte fallback
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(kinds)
    w.add_bos_token_id(meta.bos_id)
    w.add_eos_token_id(meta.eos_id)
    w.add_eot_token_id(meta.im_end_id)      # the end of a chat turn stops llama.cpp's chat
    w.add_unk_token_id(meta.unk_id)
    w.add_pad_token_id(meta.pad_id)
    w.add_add_bos_token(meta.add_bos)
    w.add_add_eos_token(meta.add_eos)
    w.add_add_space_prefix(meta.add_space_prefix)
    w.add_chat_template(meta.chat_template)


def write_gguf(model, meta: TokenizerMeta, path: str | os.PathLike, outtype: str, name: str = "kr-mini-llm") -> GGUFReport:
    """Writes `model` with `meta` to `path` (a temporary file renamed into place)."""
    import gguf

    config = model.config
    check_gguf_config(config, meta, outtype)
    arch = arch_of(config)
    report = GGUFReport(arch, outtype)

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), arch)
        try:
            _add_metadata(w, config, meta, arch, name, outtype)
            for tname, data in _tensors(model, arch):
                array, qtype = _encode(tname, data, outtype, report)
                w.add_tensor(tname, array, raw_dtype=qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()

    atomic_write(path, write)
    return report
