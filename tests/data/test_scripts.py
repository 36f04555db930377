import subprocess
import sys
from pathlib import Path

from kr_mini_llm.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]


def _run(script, *args, cwd):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_cli_prepare_train_tokenize(tmp_path, junk_corpus_dir):
    raw, _ = junk_corpus_dir
    r = _run("prepare_data.py", "--input", raw, "--split", "80/10/10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data/processed/train.txt").is_file() and "invalid UTF-8" in r.stdout
    r = _run("train_tokenizer.py", "--input", "data/processed/train.txt", "--vocab_size", 400,
             "--output", "models/tokenizer", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models/tokenizer.model").is_file() and (tmp_path / "models/tokenizer.vocab").is_file()
    assert "bytes/token" in r.stdout and "chars/token" in r.stdout and "byte fallback" in r.stdout
    r = _run("prepare_data.py", "--input", raw, "--split", "80/10/10", "--tokenizer", "models/tokenizer.model",
             "--num_proc", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout and "MB/s" in r.stdout
    assert (tmp_path / "data/tokens/meta.json").is_file()
    assert Tokenizer(tmp_path / "models/tokenizer").vocab_size == 400


def test_cli_errors(tmp_path):
    r = _run("prepare_data.py", "--input", tmp_path / "nope" / "*.txt", cwd=tmp_path)
    assert r.returncode == 2 and "error: --input" in r.stderr and "no such file" in r.stderr
    (tmp_path / "data/processed").mkdir(parents=True)
    r = _run("train_tokenizer.py", "--input", tmp_path / "missing.txt", "--output", tmp_path / "t", cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr
    from .conftest import korean_docs
    (tmp_path / "ko.txt").write_text("\n\n".join(korean_docs(20)), encoding="utf-8")
    r = _run("prepare_data.py", "--input", tmp_path / "ko.txt", "--tokenizer", tmp_path / "none.model", cwd=tmp_path)
    assert r.returncode == 2 and "tokenizer model not found" in r.stderr and "train_tokenizer.py" in r.stderr
