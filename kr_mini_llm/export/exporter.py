"""A checkpoint (plus LoRA adapters, fused) to a GGUF file + Ollama Modelfile, or to a HF directory.

Everything that can be wrong with the input is checked before the first byte is written, and
every file is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from ..io import layout
from ..io.atomic import atomic_write_text, staged_directory
from ..io.outputs import OutputError, claim_output
from .errors import ExportError
from .tokenizer_meta import GENERATION_DEFAULTS, TokenizerMeta

FORMATS = ("gguf", "hf")
HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExportResult:
    format: str
    outtype: str
    path: Path
    files: List[Path] = field(default_factory=list)
    arch: str = ""
    kept_unquantized: List[str] = field(default_factory=list)


def modelfile_path(gguf_path: Path) -> Path:
    return gguf_path.with_suffix(".Modelfile")


def load_for_export(model_dir, adapter_path=None, tokenizer=None):
    """(model, tokenizer) with the adapters fused in; LoRA and checkpoint errors become ExportError."""
    from ..data.tokenizer import Tokenizer, TokenizerError
    from ..lora import LoRAError
    from ..lora.adapters import load_adapters
    from ..lora.apply import fuse_lora
    from ..lora.base import load_base_model
    from ..checkpoint import CheckpointError

    try:
        base = load_base_model(model_dir, tokenizer)
        if adapter_path is not None:
            load_adapters(base.model, adapter_path)
            fuse_lora(base.model)
        tok = Tokenizer(base.tokenizer_path)
    except (LoRAError, CheckpointError, TokenizerError, FileNotFoundError) as e:
        raise ExportError(str(e)) from None
    except (ValueError, RuntimeError) as e:   # shape mismatches between adapters / weights and the model
        raise ExportError(f"{adapter_path or model_dir}: {e}") from None
    return base.model.eval(), tok


def export_model(model_dir, output, format: str = "gguf", outtype: str = "f32", adapter_path=None,
                 tokenizer=None, name: Optional[str] = None, overwrite: bool = False) -> ExportResult:
    from .gguf_writer import OUTTYPES, check_gguf_config

    if format not in FORMATS:
        raise ExportError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    allowed = OUTTYPES if format == "gguf" else tuple(HF_DTYPES)
    if outtype not in allowed:
        raise ExportError(f"--outtype {outtype!r} is not available for {format} (choose {', '.join(allowed)})")
    output = Path(output)
    try:
        claim_output(output, overwrite=overwrite, inputs=(model_dir, adapter_path, tokenizer),
                     also=[modelfile_path(output)] if format == "gguf" else [], is_dir=format == "hf")
    except OutputError as e:
        raise ExportError(str(e)) from None
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent} does not exist; create it first")
    model, tok = load_for_export(model_dir, adapter_path, tokenizer)
    try:
        meta = TokenizerMeta.from_tokenizer(tok)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if format == "gguf":
        check_gguf_config(model.config, meta, outtype)
        return _export_gguf(model, meta, output, outtype, name or Path(model_dir).resolve().name)
    return _export_hf(model, meta, tok.path, output, outtype)


def _export_gguf(model, meta, output: Path, outtype: str, name: str) -> ExportResult:
    from .gguf_writer import write_gguf
    from .modelfile import modelfile_text

    report = write_gguf(model, meta, output, outtype, name=name)
    mf = modelfile_path(output)
    atomic_write_text(mf, modelfile_text(output.name, meta, model.config.max_seq_length))
    return ExportResult("gguf", outtype, output, [output, mf], report.arch, report.kept_unquantized)


def _export_hf(model, meta, sp_model: Path, output: Path, outtype: str) -> ExportResult:
    with staged_directory(output) as tmp:  # replaces `output` only where claim_output allowed it
        write_hf_dir(model.to(HF_DTYPES[outtype]), meta, sp_model, tmp)
    return ExportResult("hf", outtype, output, sorted(output.iterdir()))


def write_hf_copy(model, sp_model: Path, out: Path) -> None:
    """write_hf_dir with the tokenizer's metadata read from `sp_model` (the fused model's HF copy)."""
    from ..data.tokenizer import Tokenizer

    write_hf_dir(model, TokenizerMeta.from_tokenizer(Tokenizer(sp_model)), sp_model, out)


def write_hf_dir(model, meta: TokenizerMeta, sp_model: Path, out: Path) -> None:
    """save_hf's config.json + model.safetensors (in the model's dtype) and the tokenizer files,
    into the new directory `out` (the caller renames it into place)."""
    from ..model.hf import save_hf
    from .hf_tokenizer import write_hf_tokenizer

    save_hf(model, out)
    cfg_file = out / layout.HF_CONFIG
    cfg = json.loads(cfg_file.read_text())
    cfg["torch_dtype"] = cfg["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    write_hf_tokenizer(meta, sp_model, out, model.config.max_seq_length)
    generation = {"bos_token_id": meta.bos_id, "eos_token_id": meta.stop_ids, "pad_token_id": meta.pad_id,
                  "do_sample": True, **GENERATION_DEFAULTS}
    (out / layout.HF_GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
    _readable_by_all(out)


def _readable_by_all(directory: Path) -> None:
    # safetensors and tempfile-style writers leave 0600; an exported model is meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)
