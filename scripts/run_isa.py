#!/usr/bin/env python3
"""Runs a command as if on an older x86 CPU: oneDNN, MKL and ATen capped at an ISA level and our
kernels built for it (build/isa-LEVEL, built or brought up to date first).

    python scripts/run_isa.py avx2 -- python -m pytest tests/ops     # `make test-isa-avx2`
    python scripts/run_isa.py avx512-no-amx -- python scripts/train.py ...

Levels: see ISA_LEVELS in scripts/bench_common.py (the benchmarks' --isa uses the same table).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ISA_LEVELS, isa_env  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] not in ISA_LEVELS or args[1] != "--":
        sys.exit(f"usage: run_isa.py {{{'|'.join(ISA_LEVELS)}}} -- COMMAND ...")
    env = isa_env(args[0])
    sys.stdout.flush()
    os.execvpe(args[2], args[2:], env)


if __name__ == "__main__":
    main()
