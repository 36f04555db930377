"""scripts/serve.py: starts on 127.0.0.1 and answers; bad arguments are one clear line; --dtype reaches the loader."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kr_mini_llm.cli import serve as cli

from .conftest import http

ROOT = Path(__file__).resolve().parents[2]


def test_serves_on_loopback_by_default_and_stops_cleanly(model_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(model_dir),
                             "--port", "0", "--max-batch", "2", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving '{model_dir.name}' on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        status, body = http(url + "/v1/completions", {"model": model_dir.name, "prompt": "오늘", "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "error: "),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--speculative", "prompt_lookup", "--num-draft-tokens", "0"], "num_draft_tokens must be a whole number"),
    (["--speculative", "draft"], "needs a draft model"),
    (["--speculative", "prompt_lookup", "--draft-model", "/some/model"], "drafts only with --speculative draft"),
])
def test_bad_arguments_are_one_clear_line(model_dir, args, message, capsys):
    if "--model" not in args:
        args = ["--model", str(model_dir), *args]
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_port_in_use_is_a_clear_error(model_dir, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = cli.main(["--model", str(model_dir), "--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == 2 and "cannot listen on 127.0.0.1:" in err


def test_dtype_goes_to_the_loader_only_when_it_takes_one(monkeypatch):
    from kr_mini_llm.inference import Generator

    calls = []

    def without_dtype(path, device=None, tokenizer_path=None, adapter_path=None):
        calls.append(dict(path=path))
        return "gen"

    monkeypatch.setattr(Generator, "from_pretrained", staticmethod(without_dtype))
    assert cli.load_generator("m", dtype="float32") == "gen" and calls[-1] == {"path": "m"}
    assert cli.load_generator("m") == "gen"
    with pytest.raises(ValueError, match="loads float32 weights only"):
        cli.load_generator("m", dtype="bfloat16")

    def with_dtype(path, device=None, tokenizer_path=None, adapter_path=None, dtype=None):
        calls.append(dict(path=path, dtype=dtype))
        return "gen"

    monkeypatch.setattr(Generator, "from_pretrained", staticmethod(with_dtype))
    assert cli.load_generator("m", dtype="bfloat16") == "gen" and calls[-1] == {"path": "m", "dtype": "bfloat16"}
