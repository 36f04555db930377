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
