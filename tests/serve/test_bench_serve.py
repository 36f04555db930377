"""scripts/bench_serve.py runs end to end, with its speculative columns (a smoke test on the tiny
test model, not a measurement)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serve_writes_its_table(model_dir, tmp_path):
    out = tmp_path / "serve.md"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_serve.py"), "--model", str(model_dir),
                        "--concurrency", "1,3", "--requests", "3", "--max_tokens", "4", "--repeats", "1",
                        "--threads", "1", "--speculative", "prompt_lookup", "--output", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    assert "Command: `python scripts/bench_serve.py" in text and "Total benchmark time" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    # complete, own answer, then the speculative server's tok/s, its ratio, and its answers equal to plain's
    cells = [[c.strip() for c in row.split("|")[-6:-1]] for row in rows]
    assert len(rows) == 2 and all(c[0] == c[1] == c[4] == "3/3" and c[3].endswith("x") for c in cells), rows
    assert "speculative output tok/s" in text
