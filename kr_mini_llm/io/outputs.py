"""The one rule for every command that writes: an output that already exists is refused unless the
user passed --overwrite, and no output may be, hold or lie inside one of the command's own inputs
(not even with --overwrite: replacing a folder that holds the input would delete the input).

Commands call `claim_output` before they load or compute anything, so a refused run costs nothing
and writes nothing. The writers themselves (io/atomic.py) then replace the output atomically.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import KrMiniLlmError

OVERWRITE_FLAG = "--overwrite"
OVERWRITE_HELP = "replace the output if it already exists (it is refused otherwise)"


class OutputError(KrMiniLlmError, ValueError):
    """An output that may not be written: it exists (no --overwrite) or it overlaps an input."""


def add_overwrite_flag(parser, *aliases: str) -> None:
    """--overwrite (plus a command's older spellings) on an argparse parser, stored as `overwrite`."""
    parser.add_argument(OVERWRITE_FLAG, *aliases, dest="overwrite", action="store_true", help=OVERWRITE_HELP)


def _relation(out: Path, inp: Path) -> str | None:
    """How `out` overlaps `inp` (both resolved), or None when they are apart."""
    if out == inp:
        return "is"
    if inp in out.parents:
        return "lies inside"
    if out in inp.parents:
        return "holds"
    return None


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None],
                    flag: str = "--output", replaces: bool = True) -> None:
    """Refuses an output that is an input, lies inside an input folder, or (where the command
    `replaces` the output folder whole, rather than adding its own files to it) is a folder that
    holds an input. Paths are resolved first, so `./run`, `run/` and a symlink to it count as `run`."""
    out = Path(output).resolve()
    for inp in inputs:
        if inp is None:
            continue
        rel = _relation(out, Path(inp).resolve())
        if rel is not None and (replaces or rel != "holds"):
            raise OutputError(f"{flag} {output} {rel} the input {inp}: a command never writes over or into its own "
                              f"input; choose another {flag}")


def claim_output(output: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = (),
                 flag: str = "--output", also: Iterable[str | os.PathLike] = (), is_dir: bool = True) -> Path:
    """Checks that `output` (a folder, or a file where `is_dir` is False, with the companion files
    `also`, e.g. a GGUF's Modelfile) may be written: none overlaps an input, and none exists unless
    `overwrite`; even then a folder never replaces a file, nor a file a folder. Returns `output`."""
    paths = [Path(output), *map(Path, also)]
    inputs = list(inputs)
    for p in paths:
        check_not_input(p, inputs, flag)
    for i, p in enumerate(paths):
        if not (p.exists() or p.is_symlink()):
            continue
        found = "folder" if p.is_dir() else "file"
        if not overwrite:
            raise OutputError(f"{p} already exists (a {found}); choose another {flag}, or pass {OVERWRITE_FLAG} "
                              "to replace it")
        wanted = "folder" if (is_dir and i == 0) else "file"
        if found != wanted:
            raise OutputError(f"{p} is a {found}, and this command writes a {wanted} there; {OVERWRITE_FLAG} "
                              f"replaces a {wanted} only: choose another {flag}")
    return paths[0]
