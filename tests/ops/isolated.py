"""Runs Python in a child process, so that a segfault or abort in a kernel fails one test with the
child's output instead of killing pytest."""
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(args, timeout=240):
    """`python <args>` from the repository root; returns the CompletedProcess (output as text)."""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # a crash prints the Python stack of the child
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def describe_exit(proc, tail=6000) -> str:
    """How the child ended (the signal by name) and the end of its output."""
    rc = proc.returncode
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
    out = (proc.stdout + proc.stderr)[-tail:]
    return f"child {how}; last output:\n{out}"


def assert_clean_exit(proc) -> None:
    assert proc.returncode == 0, describe_exit(proc)
