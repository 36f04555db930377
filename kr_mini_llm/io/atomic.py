"""Atomic writes: a file or a directory is either complete or untouched, never half written.

A file is written to a hidden temporary name in the same directory (same filesystem, so the
rename is atomic), flushed to disk, then renamed over the target; a directory is staged the same
way and swapped in by replace_directory, which keeps some complete copy at every moment.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Suffixes of what an interrupted atomic write leaves behind (integrity.py skips them; clean_leftovers removes them).
TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"
DELETING_SUFFIX = ".deleting"


def temp_path(path: str | os.PathLike) -> Path:
    """The hidden name `path` is written under before the rename: dir/.NAME.tmp."""
    p = Path(path)
    return p.with_name(f".{p.name}{TMP_SUFFIX}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename is durable only once its directory is); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Calls `write(tmp)` to produce the file at a temporary name beside `path`, fsyncs it and
    renames it to `path`. If `write` fails, the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def replace_directory(tmp: Path, final: Path) -> None:
    """Puts the finished directory `tmp` at `final`; an existing `final` is moved aside first and
    dropped only after the rename, so some complete copy exists at every moment."""
    if final.exists():
        old = final.with_name(f".{final.name}{OLD_SUFFIX}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty hidden staging directory beside `final`; when the block ends without an
    error its contents are flushed and it replaces `final` (replace_directory), otherwise it is
    removed and `final` is untouched."""
    final = Path(final)
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_dir(tmp)
        replace_directory(tmp, final)
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def created_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Makes the directory `path` (and its missing parents) for the block; if the block fails,
    the directories it made are removed with what was put in them, and one that existed before
    is left as it was: a failed command leaves nothing behind that it created."""
    path = Path(path)
    made = None                          # the outermost directory made here
    for p in (path, *path.parents):
        if p.exists():
            break
        made = p
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if made is not None:
            remove_directory(made)
        raise


def remove_directory(path: Path) -> None:
    """Renames `path` to a hidden `.NAME.deleting`, then deletes it: it disappears under its name at
    once, and a crash during the deletion leaves only a hidden leftover."""
    doomed = path.with_name(f".{path.name}{DELETING_SUFFIX}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
