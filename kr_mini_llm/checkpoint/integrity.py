"""Checksums of checkpoint files: recorded when a checkpoint is written, verified when it is read,
so a flipped bit on disk (or a hand-edited file) is reported, naming the file, instead of training on.

checkpoint-STEP/checksums.json
  {"algorithm": "blake2b", "files": {"model.safetensors": {"size": 1234, "blake2b": "..."}, ...}}

blake2b (hashlib, 64-byte digest; hashlib releases the GIL, so files are hashed on several threads)
reads a checkpoint that was just written from the page cache: recording costs a fraction of the
save. Directories without checksums.json (written before it existed, or assembled by hand) load
unverified.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import KrMiniLlmError
from ..io.atomic import TMP_SUFFIX, atomic_write_text
from ..io.layout import CHECKSUMS as MANIFEST

ALGORITHM = "blake2b"


class IntegrityError(KrMiniLlmError, RuntimeError):
    """A checkpoint file does not match the checksum recorded when it was written."""


def file_digest(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, ALGORITHM).hexdigest()


def tensors_digest(tensors: dict) -> str:
    """Digest of named tensors (names, dtypes, shapes and bytes), for files that carry their own
    checksum in their metadata (LoRA adapters)."""
    h = hashlib.blake2b()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digests(paths: list[Path]) -> list[str]:
    """file_digest of each path, several files at once (the model and optimizer files are the big ones)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(len(paths), os.cpu_count() or 1, 4))
    if workers == 1:
        return [file_digest(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(file_digest, paths))


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.endswith(TMP_SUFFIX))


def write_manifest(directory: str | os.PathLike) -> Path:
    """Records size and digest of every file under `directory` (written atomically)."""
    directory = Path(directory)
    names = _files(directory)
    digests = _digests([directory / name for name in names])
    files = {name: {"size": (directory / name).stat().st_size, ALGORITHM: digest}
             for name, digest in zip(names, digests)}
    return atomic_write_text(directory / MANIFEST, json.dumps({"algorithm": ALGORITHM, "files": files}, indent=1) + "\n")


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """{name: {"size", "blake2b"}} of a checkpoint, or None when it has no checksums.json."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {manifest.get('algorithm')!r}, expected {ALGORITHM}")
        if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
            raise ValueError("'files' is not a table of {name: {size, blake2b}}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} is unreadable ({e}); the checkpoint is damaged") from None
    return files


def listed_files_missing(directory: str | os.PathLike) -> list[str]:
    """The files the manifest lists that are not there (a stat per file, no hashing): what a directory
    that lost files (a half-deleted checkpoint) lacks. A file that is there with another size is
    damaged, not missing: verify() names it when the checkpoint is loaded, rather than a lookup for
    the latest checkpoint silently passing over it. An unreadable manifest counts as missing."""
    directory = Path(directory)
    try:
        files = read_manifest(directory)
    except IntegrityError:
        return [MANIFEST]
    return [name for name in (files or {}) if not (directory / name).is_file()]


def verify(directory: str | os.PathLike, names: list[str] | None = None) -> bool:
    """Checks the files (all, or `names`) against checksums.json; raises IntegrityError naming the first
    file that differs or is missing. Returns False when there is no manifest (nothing verified)."""
    directory = Path(directory)
    files = read_manifest(directory)
    if files is None:
        return False
    names = sorted(files) if names is None else [n for n in names if n in files]
    for name in names:
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing (checksums.json lists it); the checkpoint is incomplete")
    wrong_size = [n for n in names if (directory / n).stat().st_size != files[n].get("size")]
    same_size = [n for n in names if n not in wrong_size]
    digests = dict(zip(same_size, _digests([directory / n for n in same_size])))
    for name in names:
        path = directory / name
        if name in wrong_size or digests[name] != files[name].get(ALGORITHM):
            raise IntegrityError(f"{path} does not match the checksum recorded when it was saved: the file was "
                                 "damaged on disk or edited. Use an earlier checkpoint, or delete "
                                 f"{directory / MANIFEST} to load it anyway")
    return True
