import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts/test_config.py"), *args],
                          capture_output=True, text=True)


def test_script_passes_on_the_shipped_configs():
    r = run()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Parameters: 100.1M (100,092,672)" in r.stdout  # model_small, counted exactly
    assert "모든 테스트 통과" in r.stdout


def test_script_fails_on_a_bad_config(tmp_path):
    for name in ("tiny", "small", "medium", "large"):
        (tmp_path / f"model_{name}.yaml").write_text((ROOT / f"configs/model_{name}.yaml").read_text())
    (tmp_path / "model_small.yaml").write_text("hidden_size: 768\nnum_layer: 12\n")
    r = run("--configs", str(tmp_path))
    assert r.returncode == 1
    assert "did you mean 'num_layers'" in r.stdout
