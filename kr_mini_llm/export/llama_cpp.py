"""llama.cpp as an oracle for our GGUF files: its tokenizer and its greedy decoding, run from the
binaries scripts/build_llama_cpp.sh builds (llama-tokenize, and kr-llama-greedy from
scripts/llama_cpp_greedy.cpp). Used by tests/export and scripts/verify_gguf.py."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Optional


def llama_cpp_dir() -> Path:
    return Path(os.environ.get("KR_LLAMA_CPP_DIR", Path.home() / ".cache" / "kr-mini-llm" / "llama.cpp"))


def _bin(name: str) -> Path:
    return llama_cpp_dir() / "build" / "bin" / name


def missing_reason() -> Optional[str]:
    """None when llama.cpp is built, else one line saying what is missing and how to build it."""
    for name in ("llama-tokenize", "kr-llama-greedy"):
        if not os.access(_bin(name), os.X_OK):
            return f"llama.cpp is not built ({_bin(name)} missing); run `bash scripts/build_llama_cpp.sh`"
    return None


def _run(args, stdin: bytes | None = None) -> bytes:
    out = subprocess.run([str(a) for a in args], input=stdin, capture_output=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({out.returncode}): "
                           f"{out.stderr.decode(errors='replace')[-2000:]}")
    return out.stdout


def tokenize(gguf: str | os.PathLike, text: str, add_bos: bool) -> List[int]:
    """llama.cpp's token ids of `text`, special tokens parsed (as llama-cli and llama-server do)."""
    args = [_bin("llama-tokenize"), "-m", gguf, "--stdin", "--ids", "--log-disable"] + ([] if add_bos else ["--no-bos"])
    line = _run(args, text.encode("utf-8")).decode().strip().splitlines()[-1]
    return [int(x) for x in line.strip("[]").split(",") if x.strip()]


def greedy(gguf: str | os.PathLike, ids: List[int], n: int) -> List[int]:
    """llama.cpp's n greedy tokens after the prompt ids (f32 KV cache; does not stop at EOS)."""
    return [int(x) for x in _run([_bin("kr-llama-greedy"), gguf, n, *ids]).split()]


def argmax_each(gguf: str | os.PathLike, ids: List[int]) -> List[int]:
    """llama.cpp's argmax after each of `ids` (teacher forcing, one forward pass)."""
    return [int(x) for x in _run([_bin("kr-llama-greedy"), gguf, 0, *ids]).split()]
