"""Adapter files, as mlx-lm writes them, and the checks that make loading them safe.

adapter-path/
  adapter_config.json             base model path and fingerprint, lora_parameters, num_layers,
                                  the training arguments
  adapters.safetensors            the latest adapter weights (lora_A [rank, in], lora_B [out, rank];
                                  DoRA adds lora_magnitude [out])
  0000100_adapters.safetensors    every --save-every iterations
  *.state.pt                      beside each weights file: optimizer, RNG, data position, step,
                                  so --resume-adapter-file continues exactly

Every file is written to a temporary name and renamed, so a crash never leaves a half-written
adapter. Each weights file records in its metadata a blake2b digest of its tensors and of the
.state.pt beside it; loading checks both, so a damaged file is named rather than trained on. The base-model fingerprint is a hash of the base weights (names, dtypes, shapes and
bytes), so the same weights match whichever file format they were loaded from.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..io.atomic import atomic_write
from ..io.layout import ADAPTER_CONFIG as CONFIG_NAME
from ..io.layout import ADAPTER_WEIGHTS as WEIGHTS_NAME
from ..checkpoint import integrity
from .apply import ADAPTER_TYPES, LoRAError, LoRAParameters, apply_lora, lora_modules, lora_state_dict


def model_fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of sha256 over the base (non-adapter) weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if ".lora_" in name:
            continue
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def numbered_name(step: int) -> str:
    return f"{step:07d}_adapters.safetensors"


def state_path(weights_file: str | os.PathLike) -> Path:
    p = Path(weights_file)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.pt")


def write_adapter_config(adapter_path: str | os.PathLike, config: dict) -> Path:
    out = Path(adapter_path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_NAME
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(config, indent=4, ensure_ascii=False) + "\n",
                                             encoding="utf-8"))
    return path


def read_adapter_config(adapter_path: str | os.PathLike) -> dict:
    path = Path(adapter_path)
    if path.is_file():  # an adapters.safetensors file: its directory holds the config
        path = path.parent
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise LoRAError(f"{path}: no {CONFIG_NAME}; pass the --adapter-path directory that "
                        "scripts/lora.py wrote (it holds adapters.safetensors and adapter_config.json)")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LoRAError(f"{cfg_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    kind = config.get("fine_tune_type", "lora")
    if kind == "full":
        raise LoRAError(f"{path} holds a full fine-tune, not adapters: it is a model of its own; pass it as "
                        f"--model {path} (it has nothing to fuse)")
    if kind not in ADAPTER_TYPES:
        raise LoRAError(f"{cfg_file}: fine_tune_type '{kind}' is not supported (adapters: {', '.join(ADAPTER_TYPES)})")
    for key in ("num_layers", "lora_parameters"):
        if key not in config:
            raise LoRAError(f"{cfg_file}: missing '{key}'; this is not a kr-mini-llm/mlx-lm adapter config")
    return config


def lora_parameters_from(config: dict, where: str = CONFIG_NAME) -> LoRAParameters:
    lp = dict(config["lora_parameters"])
    unknown = set(lp) - {"rank", "scale", "dropout", "keys"}
    if unknown:
        raise LoRAError(f"{where}: unknown lora_parameters {sorted(unknown)} (known: rank, scale, dropout, keys)")
    return LoRAParameters(**lp)


def save_adapter_weights(path: str | os.PathLike, model: torch.nn.Module, base_fingerprint: str,
                         step: int, state: dict | None = None) -> Path:
    """Writes the adapter tensors (and, when given, the training state beside them), atomically.
    The state goes first: a crash in between leaves weights whose step the state does not match,
    which load_training_state refuses."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    if not tensors:
        raise LoRAError("the model carries no LoRA adapters to save")
    meta = {"format": "pt", "base_model_fingerprint": base_fingerprint, "step": str(step),
            "tensors_blake2b": integrity.tensors_digest(tensors)}
    if state is not None:
        atomic_write(state_path(path), lambda tmp: torch.save({**state, "step": step}, tmp))
        meta["state_blake2b"] = integrity.file_digest(state_path(path))
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load_adapter_weights(model: torch.nn.Module, file: str | os.PathLike,
                         expected_fingerprint: str | None = None) -> dict:
    """Copies adapter tensors from `file` into the model's LoRA layers, after checking that the
    file's names and shapes are exactly the model's and its base fingerprint matches.
    Returns the file's metadata."""
    from safetensors import SafetensorError, safe_open

    file = Path(file)
    if not file.is_file():
        raise LoRAError(f"{file}: adapter file not found")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LoRAError(f"{file}: not a readable safetensors file ({e}); the file is damaged") from None
    recorded = meta.get("tensors_blake2b")
    if recorded and integrity.tensors_digest(tensors) != recorded:
        raise LoRAError(f"{file} does not match the checksum recorded when it was saved: the file was damaged on "
                        "disk or edited. Use an earlier adapter file (NNNNNNN_adapters.safetensors)")
    saved_fp = meta.get("base_model_fingerprint")
    if expected_fingerprint and saved_fp and saved_fp != expected_fingerprint:
        raise LoRAError(f"{file} was trained on a base model with fingerprint {saved_fp}, but the model it is "
                        f"loaded onto has {expected_fingerprint}; load the base model the adapters were trained "
                        "on (see 'model' in adapter_config.json)")
    copy_adapter_tensors(model, tensors, str(file))
    return meta


def copy_adapter_tensors(model: torch.nn.Module, tensors: dict, where: str) -> None:
    """Copies {'layers.3.self_attn.q_proj.lora_A': tensor, ...} into the model's LoRA layers after
    checking that the names and shapes are exactly the model's."""
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise LoRAError(f"{where} does not match the adapters of this model: missing {missing[:4]}, unexpected "
                        f"{unexpected[:4]}; check num_layers and lora_parameters.keys in adapter_config.json")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise LoRAError(f"{where}: {name} has shape {tuple(t.shape)} but this model needs "
                            f"{tuple(own[name].shape)} (different rank or base model dimensions)")
    mods = lora_modules(model)
    with torch.no_grad():
        for name, t in tensors.items():
            mod_name, _, attr = name.rpartition(".")
            getattr(mods[mod_name], attr).copy_(t)


def load_training_state(weights_file: str | os.PathLike, step: int, digest: str | None = None) -> dict | None:
    """The .state.pt beside an adapter file, or None when there is none (weights-only resume).
    `digest`: the blake2b the weights file recorded for it."""
    path = state_path(weights_file)
    if not path.is_file():
        return None
    if digest and integrity.file_digest(path) != digest:
        raise LoRAError(f"{path} does not match the checksum recorded in {Path(weights_file).name} (damaged, edited, "
                        "or from an interrupted save); delete it to resume from the weights alone")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for damaged files)
        raise LoRAError(f"{path}: the training state is unreadable ({e}); delete it to resume from the "
                        "weights alone") from None
    if state.get("step") != step:
        raise LoRAError(f"{path} is for iteration {state.get('step')} but {Path(weights_file).name} for "
                        f"{step} (an interrupted save); delete the .state.pt to resume from the weights alone")
    return state


def load_adapters(model: torch.nn.Module, adapter_path: str | os.PathLike, check_fingerprint: bool = True,
                  weights: str | os.PathLike | None = None) -> dict:
    """Puts the adapters of `adapter_path` (a directory from scripts/lora.py) on `model`, unfused;
    returns the adapter config."""
    adapter_path = Path(adapter_path)
    config = read_adapter_config(adapter_path)
    params = lora_parameters_from(config, str(adapter_path / CONFIG_NAME))
    expected = model_fingerprint(model) if check_fingerprint else None
    saved = config.get("base_model_fingerprint")
    if expected and saved and saved != expected:
        raise LoRAError(f"{adapter_path}: the adapters were trained on base model {config.get('model')!r} "
                        f"(fingerprint {saved}), but the model they are loaded onto has fingerprint {expected}; "
                        "load the base model they were trained on")
    file = Path(weights) if weights else (adapter_path if adapter_path.is_file() else adapter_path / WEIGHTS_NAME)
    if not file.is_file():
        raise LoRAError(f"{file}: adapter weights not found (train with scripts/lora.py --train first)")
    apply_lora(model, int(config["num_layers"]), params, dora=config.get("fine_tune_type") == "dora")
    load_adapter_weights(model, file, expected)
    return config
