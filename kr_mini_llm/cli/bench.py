"""Run a benchmark: `kr-mini-llm bench NAME [flags]` = `python scripts/bench_NAME.py [flags]`.

The benchmarks are scripts of the source checkout (they build kernels for other ISA levels and
write under benchmarks/), so this command needs that checkout: an installed wheel has no scripts/.
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from .command import command

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
NOT_BENCHMARKS = ("bench_common.py",)


def benchmarks() -> dict[str, Path]:
    """{name: scripts/bench_NAME.py} of the source checkout (empty when there is none)."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(SCRIPTS.glob("bench_*.py")) if p.name not in NOT_BENCHMARKS}


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return textwrap.shorten(doc.split("\n\n")[0], 80, placeholder=" ...")


def build_parser(prog=None) -> argparse.ArgumentParser:
    found = benchmarks()
    listing = "\n".join(f"  {name:16} {_summary(path)}" for name, path in found.items()) or \
        f"  (none: {SCRIPTS} is missing; run from a source checkout)"
    p = argparse.ArgumentParser(prog=prog, description=__doc__ + "\nbenchmarks:\n" + listing,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="which benchmark (listed above)")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="its flags (`NAME --help` lists them)")
    return p


@command()
def main(argv=None, prog=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help exits here
    name, flags = argv[0], argv[1:]
    found = benchmarks()
    if name not in found:
        parser.error(f"no benchmark {name!r}; choose from {', '.join(found) or 'none (no scripts/ here)'}")
    # Its own process, as `python scripts/bench_NAME.py FLAGS` would run: the same interpreter, its exit code.
    return subprocess.call([sys.executable, str(found[name]), *flags])
