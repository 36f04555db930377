"""Reading DCP (torch.distributed.checkpoint) shards without running code from them.

torch's FileSystemReader reads `dcp/.metadata` with plain `pickle.load`, and DefaultLoadPlanner
reads every non-tensor entry with `torch.load(weights_only=False)`: a crafted checkpoint runs
whatever it likes. Here both are replaced:

  SafeFileSystemReader  unpickles `.metadata` with an allow-list of the metadata types DCP writes
                        (its dataclasses, torch.Size, dtypes, layouts, paths); anything else, such
                        as os.system, is refused before it is called, and every shard file it names
                        must lie inside the dcp/ directory.
  SafeLoadPlanner       reads non-tensor entries (optimizer hyper-parameters) with weights_only=True.

`load(state, path, no_dist)` is dcp.load with both.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as _metadata

from ..errors import KrMiniLlmError


class UnsafeCheckpointError(KrMiniLlmError, RuntimeError):
    """A checkpoint file holds something other than the data it should (possibly a crafted file)."""


def _allowed(module: str, name: str):
    """The object a `.metadata` pickle may name, or None."""
    if module == "torch.distributed.checkpoint.metadata":
        obj = getattr(_metadata, name, None)  # its dataclasses and the memory-format enum, not its imports
        return obj if isinstance(obj, type) and obj.__module__ == _metadata.__name__ else None
    if (module, name) == ("torch.distributed.checkpoint.filesystem", "_StorageInfo"):
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        return _StorageInfo
    if module == "torch":
        obj = getattr(torch, name, None)
        if name == "Size" or isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            return obj
        return None
    if (module, name) == ("torch.serialization", "_get_layout"):
        return torch.serialization._get_layout  # maps a layout's name to torch.layout, nothing else
    if module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"):
        import pathlib

        return getattr(pathlib, name)
    if (module, name) == ("collections", "OrderedDict"):
        import collections

        return collections.OrderedDict
    return None


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        obj = _allowed(module, name)
        if obj is None:
            raise UnsafeCheckpointError(f"it refers to {module}.{name}, which DCP metadata never holds")
        return obj


def read_metadata_file(path: str | os.PathLike) -> _metadata.Metadata:
    """The Metadata object of a DCP `.metadata` file, unpickled with the allow-list, after checking
    that every shard file it names lies beside it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UnsafeCheckpointError(f"{path}: cannot be read ({e}); the checkpoint is incomplete") from None
    try:
        meta = _MetadataUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: refusing to load: {e} (the file may have been crafted to run "
                                    "code; kr-mini-llm never writes such a file)") from None
    except Exception as e:  # noqa: BLE001 -- pickle raises many kinds for a damaged file
        raise UnsafeCheckpointError(f"{path}: not a readable DCP metadata file ({type(e).__name__}: {e}); "
                                    "the checkpoint is damaged") from None
    if not isinstance(meta, _metadata.Metadata):
        raise UnsafeCheckpointError(f"{path}: holds a {type(meta).__name__}, not DCP metadata")
    root = Path(path).parent.resolve()
    for info in (meta.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or (root / rel).resolve().parent != root:
            raise UnsafeCheckpointError(f"{path} names the shard file {rel!r}, which is not a file beside it; "
                                        "refusing to load it")
    return meta


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs) -> _metadata.Metadata:
        meta = read_metadata_file(self._get_metadata_path(kwargs.get("rank")))
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = _metadata.StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(f"the DCP entry {read_item.dest_index.fqn} holds objects other than "
                                        f"tensors and numbers ({refused_object(e)}); refusing to load it") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner uses

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load(state: dict, path: str | os.PathLike, no_dist: bool) -> None:
    """torch.distributed.checkpoint.load(state, path) with the safe reader and planner. The metadata
    is checked here first, so a refused file fails with one clear UnsafeCheckpointError rather than
    inside DCP's per-rank machinery."""
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    read_metadata_file(Path(path) / ".metadata")
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner(), no_dist=no_dist)
    except CheckpointException as e:  # a BaseException wrapping each rank's error and traceback
        errors = {rank: exc for rank, (exc, _) in e.failures.items()}
        unsafe = next((x for x in errors.values() if isinstance(x, UnsafeCheckpointError)), None)
        if unsafe is not None:
            raise UnsafeCheckpointError(f"{path}: {unsafe}") from None
        raise RuntimeError("; ".join(f"rank {r}: {type(x).__name__}: {x}" for r, x in errors.items())) from None


def refused_object(e: Exception) -> str:
    """What torch.load(weights_only=True) refused, in a few words, from its long message."""
    m = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", str(e))
    if m:
        return f"it refers to {m.group(1)}"
    return "torch.load(weights_only=True) refused it"
