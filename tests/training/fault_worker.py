"""scripts/train.py with faults injected, for test_faults.py (run as a subprocess).

    KR_FAULT_KILL_AT="os.replace:3"   SIGKILL this process at the 3rd call of os.replace
    KR_FAULT_FSIZE=50000              RLIMIT_FSIZE (bytes) for this process: a write limit, as a full disk
    python tests/training/fault_worker.py  <scripts/train.py arguments>
"""
import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kill_at(spec: str) -> None:
    target, count = spec.rsplit(":", 1)
    module_name, attr = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real = getattr(module, attr)
    calls = {"n": 0}

    def hooked(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(module, attr, hooked)


if __name__ == "__main__":
    if os.environ.get("KR_FAULT_FSIZE"):
        import resource

        limit = int(os.environ["KR_FAULT_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    if os.environ.get("KR_FAULT_KILL_AT"):
        kill_at(os.environ["KR_FAULT_KILL_AT"])
    sys.argv = [str(ROOT / "scripts" / "train.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
