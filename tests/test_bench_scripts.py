"""The benchmark scripts run (tiny shapes, a smoke test, not a measurement) and write their tables."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, args", [
    ("bench_ops.py", ["--quick", "--no-compile", "--threads", "1", "--repeats", "1"]),
    ("bench_model.py", ["--models", "tiny", "--seq", "32", "--tokens", "64", "--dtypes", "float32",
                        "--variants", "ours,ours-ref,hf-sdpa", "--repeats", "1"]),
    ("bench_generate.py", ["--models", "tiny", "--batches", "2", "--prompt_len", "8", "--new_tokens", "4",
                           "--repeats", "1"]),
])
def test_bench_script_writes_its_table(script, args, tmp_path):
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--output", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    assert f"Command: `python scripts/{script}" in text and "Total benchmark time" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 3  # a header and measured rows


def test_bench_tokenizer_compares_vocabularies_on_a_tiny_corpus(token_data, tmp_path):
    tokens, _ = token_data
    ood = tmp_path / "ood.txt"
    ood.write_text("대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.\n\n"
                   "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.\n", encoding="utf-8")
    out = tmp_path / "tokenizer.md"
    args = ["--processed", str(tokens.parent / "processed"), "--vocab-sizes", "420", "512", "--model-types", "bpe",
            "unigram", "--minutes", "0.005", "--train", "max_seq_length=32", "batch_size=4", "--threads", "1",
            "--ood", str(ood), "--output", str(out)]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_tokenizer.py"), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    assert "Command: `python scripts/bench_tokenizer.py --processed" in text and "Total benchmark time" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(c[0].strip(), c[1].strip()) for c in rows] == [("bpe", "420"), ("bpe", "512"), ("unigram", "420"),
                                                            ("unigram", "512")]
    for c in rows:
        valid_cpt, ood_cpt, valid_bpb = float(c[2]), float(c[4]), float(c[7])
        assert 1.0 < valid_cpt < 10 and 0.2 < ood_cpt < 10 and 0 < valid_bpb < 20
        # text unlike the training corpus: more of its characters fall back to bytes
        valid_fallback, ood_fallback = (float(c[i].strip().removesuffix("%")) for i in (3, 5))
        assert ood_fallback > valid_fallback
    # a larger vocabulary cuts the same validation text into fewer tokens
    assert float(rows[1][2]) > float(rows[0][2])
    assert str(ood) in text


def test_bench_tokenizer_refuses_bad_input_before_training(tmp_path):
    processed = tmp_path / "processed"
    processed.mkdir()

    def bench(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_tokenizer.py"), "--processed",
                               str(processed), "--output", str(tmp_path / "t.md"), *args],
                              capture_output=True, text=True, timeout=600)

    r = bench()
    assert r.returncode != 0 and "no train.txt, valid.txt, test.txt" in r.stderr and "prepare_data.py" in r.stderr
    for split in ("train", "valid", "test"):
        (processed / f"{split}.txt").write_text("문서\n", encoding="utf-8")
    r = bench("--vocab-sizes", "8000", "256")
    assert r.returncode != 0 and "--vocab-sizes [256]" in r.stderr and "300 or more" in r.stderr
    assert not (tmp_path / "t.md").exists()
