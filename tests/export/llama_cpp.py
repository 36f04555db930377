"""llama.cpp as the oracle: the binaries scripts/build_llama_cpp.sh builds, or a skip reason."""
import os
import subprocess
from pathlib import Path

DIR = Path(os.environ.get("KR_LLAMA_CPP_DIR", Path.home() / ".cache" / "kr-mini-llm" / "llama.cpp"))
BIN = DIR / "build" / "bin"
TOKENIZE, GREEDY = BIN / "llama-tokenize", BIN / "kr-llama-greedy"


def missing_reason():
    """None when llama.cpp is built, else the one-line reason the oracle tests skip."""
    for exe in (TOKENIZE, GREEDY):
        if not os.access(exe, os.X_OK):
            return f"llama.cpp is not built ({exe} missing); run `bash scripts/build_llama_cpp.sh`"
    return None


def tokenize(gguf, text: str, add_bos: bool) -> list:
    """llama.cpp's token ids of `text` (special tokens parsed, as llama-cli and llama-server do)."""
    args = [str(TOKENIZE), "-m", str(gguf), "--stdin", "--ids", "--log-disable"] + ([] if add_bos else ["--no-bos"])
    out = subprocess.run(args, input=text.encode("utf-8"), capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    line = out.stdout.decode().strip().splitlines()[-1]
    return [int(x) for x in line.strip("[]").split(",") if x.strip()]


def greedy(gguf, ids: list, n: int) -> list:
    """llama.cpp's n greedy tokens after the prompt ids (f32 KV cache; does not stop at EOS)."""
    out = subprocess.run([str(GREEDY), str(gguf), str(n), *map(str, ids)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    return [int(x) for x in out.stdout.split()]
