"""Checkpoint directories: written to a temporary directory and renamed, so a crash mid-save never
leaves a broken latest checkpoint; read without unpickling arbitrary objects.

checkpoint-STEP/
  model.safetensors       weights (write_weights)
  optimizer.pt            optimizer state (tensors and numbers only; loaded with weights_only)
  trainer_state.json      step, tokens seen, best validation loss, data position, ...
  model_config.yaml       model config
  tokenizer.model         the tokenizer the model was trained with (when known)
  checksums.json          size and blake2b digest of each file, verified on load (integrity.py)
  ...                     what else the writer puts there (a training run: rng.pt, config.yaml)

FSDP runs write `dcp/` (sharded model + optimizer) instead of the first two; see sharded.py.
The file names are io/layout.py's; which directory a path means is dirs.py's. What a training
run writes into a checkpoint and restores from it is training/run_checkpoint.py's: it hands
write_checkpoint the files to write, and nothing here calls back into it.

Old checkpoints are removed by renaming them to a hidden `.checkpoint-STEP.deleting` first, so a
crash mid-deletion never leaves a half-deleted directory that looks like a checkpoint; leftovers of
crashed saves and deletions are cleaned up at the next save (clean_leftovers).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..io import layout
from ..io.atomic import DELETING_SUFFIX, OLD_SUFFIX, TMP_SUFFIX, fsync_dir, remove_directory, replace_directory
from ..io.layout import staging_dir
from . import integrity
from .dirs import CheckpointError, is_complete, list_checkpoints, numbered_checkpoints, resolve_checkpoint
from .safe_dcp import refused_object
from .sharded import distributed_loader

__all__ = ["checkpoint_size", "clean_leftovers", "load_pickled", "load_weights", "nonfinite_parameters",
           "write_checkpoint", "write_weights"]


def write_checkpoint(output_dir: str | os.PathLike, step: int, write: Callable[[Path], None], *,
                     keep: int | None = None, size: Callable[[], int] | None = None) -> Path:
    """Writes output_dir/checkpoint-STEP: `write(staging)` puts the files into a fresh staging
    directory (layout.staging_dir), which then gets its checksums.json and is renamed into place;
    then all but the newest `keep` checkpoints are removed. A failed save (disk full, a write limit)
    removes its staging directory and raises CheckpointError saying why (`size()`: about how many
    bytes the checkpoint takes, for that message); the checkpoints saved before are untouched."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    final = out / layout.checkpoint_name(step)
    tmp = staging_dir(out, step)
    try:
        tmp.mkdir()
        write(tmp)
        integrity.write_manifest(tmp)
        fsync_dir(tmp)
    except BaseException as e:
        failure = _write_failure(e, tmp, layout.checkpoint_name(step), size or (lambda: None))
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from e
        raise
    replace_directory(tmp, final)
    fsync_dir(out)
    if keep:
        for stale in list_checkpoints(out)[:-keep]:
            try:
                remove_directory(stale)
            except OSError as e:  # the new checkpoint is saved; an old one that stays is no reason to stop
                warnings.warn(f"could not remove the old checkpoint {stale}: {e}", stacklevel=2)
    return final


def write_weights(directory: Path, model, optimizer=None) -> None:
    """model.safetensors (and optimizer.pt, when an optimizer is given) in `directory`: the weights
    as one process writes them (sharded.save_shards writes them as DCP shards instead)."""
    from safetensors.torch import save_model

    save_model(model, str(directory / layout.MODEL_WEIGHTS))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / layout.OPTIMIZER_STATE)


def checkpoint_size(model, optimizer=None, tokenizer_path: str | None = None) -> int:
    """About how many bytes a checkpoint of this model (and optimizer) takes on disk."""
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values() if torch.is_tensor(p))
    if optimizer is not None:
        for per_param in optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in per_param.values() if torch.is_tensor(v))
    if tokenizer_path and Path(tokenizer_path).is_file():
        total += Path(tokenizer_path).stat().st_size
    return total + 64 * 1024  # configs, state, RNG, headers


def _write_failure(e: BaseException, tmp: Path, what: str, size) -> CheckpointError | None:
    """A CheckpointError that says why writing `what` failed when storage ran out (no space, quota,
    file-size limit), or None for other failures. torch.save reports a short write only as
    'unexpected pos', so the free space and the file-size limit are looked at too."""
    text = str(e)
    code = getattr(e, "errno", None)
    if code is None and (m := re.search(r"os error (\d+)", text)):  # safetensors' Rust I/O errors
        code = int(m.group(1))
    short_write = "unexpected pos" in text or "file write failed" in text
    if not (isinstance(e, OSError) or short_write or code is not None):
        return None
    device = _mount_point(tmp.parent)
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        free = None
    try:
        needed = size()
    except Exception:  # noqa: BLE001 -- the size is only for the message
        needed = None
    written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
    mb = lambda n: f"{n / 2**20:,.1f} MB"  # noqa: E731
    needs = f"needs about {mb(needed)}" if needed else "size unknown"
    if code in (errno.ENOSPC, errno.EDQUOT) or (short_write and free is not None and needed is not None
                                                  and free < needed - written + 2**20):
        free_text = f", {mb(free)} free" if free is not None else ""
        return CheckpointError(f"no space left on {device} while saving {what} ({needs}{free_text}). The partial "
                               f"{tmp.name} was removed and the earlier checkpoints are kept; free some space "
                               "(or lower train.keep_checkpoints, or choose another --output_dir) and resume")
    limit = _file_size_limit()
    if code == errno.EFBIG or (short_write and limit is not None):
        limit_text = f" of {mb(limit)}" if limit is not None else ""
        return CheckpointError(f"the file size limit{limit_text} (ulimit -f) stopped writing {what} to {device} "
                               f"({needs}). The partial {tmp.name} was removed and the earlier checkpoints are "
                               "kept; raise the limit and resume")
    if short_write or isinstance(e, OSError):
        return CheckpointError(f"writing {what} to {device} failed ({type(e).__name__}: {text.strip()}); the "
                               f"partial {tmp.name} was removed and the earlier checkpoints are kept")
    return None


def _mount_point(path: Path) -> str:
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def clean_leftovers(output_dir: Path) -> None:
    """Removes what crashed saves and deletions left in output_dir: staging directories, directories
    being deleted, and numbered directories that are incomplete and older than the latest complete
    checkpoint. A `.checkpoint-N.old` whose checkpoint-N is missing (a crash between the two renames
    of replace_directory) is put back."""
    for p in output_dir.glob(f".{layout.CHECKPOINT_PREFIX}*"):
        name = p.name
        original = name[1:-len(OLD_SUFFIX)]
        if name.endswith(OLD_SUFFIX) and layout.checkpoint_step(original) is not None:
            final = p.with_name(original)
            if not final.exists():
                os.replace(p, final)
                continue
        if name.endswith((TMP_SUFFIX, DELETING_SUFFIX, OLD_SUFFIX)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    numbered = numbered_checkpoints(output_dir)
    complete = [step for step, p in numbered if is_complete(p)]
    for step, p in numbered:
        if complete and step < complete[-1] and not is_complete(p):
            remove_directory(p)


def load_weights(path: str | os.PathLike, model, optimizer=None) -> dict:
    """Loads a checkpoint's weights into `model` (and its optimizer state into `optimizer`, when
    given); returns its trainer_state.json with "path" (the checkpoint directory) added. Every file
    is checked against checksums.json first (optimizer.pt only with an optimizer), and the weights
    must be finite. `path` is a checkpoint or an output directory (its latest complete checkpoint)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    ckpt = resolve_checkpoint(path)
    try:
        files = integrity.read_manifest(ckpt) or {}
        integrity.verify(ckpt, [n for n in files if optimizer is not None or n != layout.OPTIMIZER_STATE])
    except integrity.IntegrityError as e:
        raise CheckpointError(str(e)) from None
    try:
        state = json.loads((ckpt / layout.TRAINER_STATE).read_text())
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: trainer_state.json is unreadable ({e}); the checkpoint is damaged") from e
    special = distributed_loader(ckpt, model)  # DCP shards, or an FSDP-sharded model: see there
    if special is not None:
        special(ckpt, model, optimizer)
    else:
        try:
            missing, unexpected = load_model(model, str(ckpt / layout.MODEL_WEIGHTS), strict=False)
        except (OSError, SafetensorError, RuntimeError) as e:
            raise CheckpointError(_other_model(ckpt, model) or
                                  f"{ckpt}/model.safetensors cannot be loaded into this model: {e}") from None
        if missing or unexpected:
            raise CheckpointError(_other_model(ckpt, model) or
                                  f"{ckpt}/model.safetensors does not match the model: missing "
                                  f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    bad = nonfinite_parameters(model)
    if bad:
        raise CheckpointError(f"{ckpt}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); training "
                              "had diverged when it was saved. Use an earlier checkpoint")
    if optimizer is not None and special is None:
        saved = load_pickled(ckpt / layout.OPTIMIZER_STATE, "optimizer state")
        try:
            optimizer.load_state_dict(saved)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt}/optimizer.pt does not match this model's optimizer "
                                  f"({type(e).__name__}: {e})") from None
    state["path"] = str(ckpt)
    return state


def _other_model(ckpt: Path, model) -> str | None:
    """One line naming the config fields in which the checkpoint's model differs from `model`, or None
    when the configs agree (or cannot be compared): torch's own report is a line per tensor."""
    from ..model import ConfigError, TransformerConfig

    config = getattr(model, "config", None)
    try:
        saved = TransformerConfig.from_yaml(ckpt / layout.MODEL_CONFIG).to_dict()
    except (ConfigError, OSError):
        return None
    if not isinstance(config, TransformerConfig):
        return None
    ours = config.to_dict()
    diff = [f"{k} {saved[k]} in the checkpoint, {ours.get(k)} in this model" for k in saved if saved[k] != ours.get(k)]
    if not diff:
        return None
    return (f"{ckpt} holds another model: {'; '.join(diff)}. Use the model config it was trained with "
            f"({ckpt / layout.MODEL_CONFIG}) or start a new run")


def load_pickled(path: Path, what: str):
    """torch.load(weights_only=True) with one clear error per way a file can be broken."""
    import pickle

    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty; the checkpoint is damaged (use an earlier one)")
        return torch.load(path, weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete (use an earlier one)") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects other than tensors and numbers ({refused_object(e)}), which "
                              "kr-mini-llm never writes; refusing to load it. It may have been crafted to run "
                              "code: use a checkpoint you trust") from None
    except Exception as e:  # noqa: BLE001 -- torch raises EOFError, RuntimeError, ... for a damaged file
        raise CheckpointError(f"{path}: the {what} is unreadable ({type(e).__name__}: {e}); the checkpoint "
                              "is damaged (use an earlier one)") from None


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters (this rank's shard of a sharded one) that hold NaN or inf."""
    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if not bool(torch.isfinite(local).all()):
                bad.append(name)
    return bad


