"""HF PEFT's LoRA format in and out (adapter_model.safetensors + adapter_config.json).

Our LoRALinear keeps A [rank, in] and B [out, rank] like PEFT's lora_A/lora_B weights, and our
module names are HF's without "model.", so conversion is renaming plus the scale: PEFT scales
B A by lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), we by `scale`, so
lora_alpha = scale * r on export. DoRA's magnitude is PEFT's lora_magnitude_vector (use_dora). PEFT itself is not needed (it is the test oracle).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..io.atomic import atomic_write, atomic_write_text
from ..io.layout import ADAPTER_CONFIG as PEFT_CONFIG
from ..io.layout import ADAPTER_WEIGHTS, PEFT_WEIGHTS
from .adapters import copy_adapter_tensors, model_fingerprint, save_adapter_weights, write_adapter_config
from .apply import ALL_KEYS, LoRAError, LoRAParameters, apply_lora, lora_modules, uses_dora
from .dora import DoRALinear
_PREFIX = "base_model.model.model."
_SHORT_TO_KEY = {k.split(".")[1]: k for k in ALL_KEYS}


def export_peft(model, out_dir: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Writes the adapters on `model` in PEFT's format (files written atomically)."""
    from safetensors.torch import save_file

    mods = lora_modules(model)
    if not mods:
        raise LoRAError("the model carries no LoRA adapters to export")
    first = next(iter(mods.values()))
    if any((m.rank, m.scale, m.dropout) != (first.rank, first.scale, first.dropout) for m in mods.values()):
        raise LoRAError("adapters with different ranks/scales per module cannot be written as one PEFT config")
    layers = sorted({int(name.split(".")[1]) for name in mods})
    targets = sorted({name.rsplit(".", 1)[1] for name in mods}, key=lambda t: list(_SHORT_TO_KEY).index(t))
    tensors = {}
    for name, m in mods.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = m.lora_A.detach().contiguous().cpu()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = m.lora_B.detach().contiguous().cpu()
        if isinstance(m, DoRALinear):
            tensors[f"{_PREFIX}{name}.lora_magnitude_vector"] = m.lora_magnitude.detach().contiguous().cpu()
    dora = uses_dora(model)
    if dora and not all(isinstance(m, DoRALinear) for m in mods.values()):
        raise LoRAError("a model with both LoRA and DoRA layers cannot be written as one PEFT config")
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": first.rank, "lora_alpha": first.scale * first.rank, "lora_dropout": first.dropout,
        "target_modules": targets, "layers_to_transform": layers, "layers_pattern": "layers",
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": dora,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / PEFT_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / PEFT_CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def _peft_settings(cfg: dict, where: str, depth: int):
    if cfg.get("peft_type") != "LORA":
        raise LoRAError(f"{where}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    for flag, why in (("fan_in_fan_out", "fan_in_fan_out (GPT-2 Conv1D layers)"),):
        if cfg.get(flag):
            raise LoRAError(f"{where}: {why} adapters are not supported")
    if cfg.get("bias", "none") != "none":
        raise LoRAError(f"{where}: bias={cfg['bias']!r} is not supported (kr-mini-llm has no biases); use bias='none'")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise LoRAError(f"{where}: per-module {key} is not supported; one rank and alpha for all modules")
    if cfg.get("modules_to_save"):
        raise LoRAError(f"{where}: modules_to_save {cfg['modules_to_save']} is not supported (only LoRA layers)")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        raise LoRAError(f"{where}: target_modules as a regex ({targets!r}) is not supported; list module names")
    keys = []
    for t in targets or []:
        short = t.rsplit(".", 1)[-1]
        if short not in _SHORT_TO_KEY:
            raise LoRAError(f"{where}: target module {t!r} cannot carry a kr-mini-llm adapter (supported: "
                            f"{', '.join(_SHORT_TO_KEY)})")
        keys.append(_SHORT_TO_KEY[short])
    layers = cfg.get("layers_to_transform")
    layers = list(range(depth)) if layers is None else [layers] if isinstance(layers, int) else sorted(layers)
    if layers != list(range(depth - len(layers), depth)):
        raise LoRAError(f"{where}: layers_to_transform {layers} are not the last blocks of the model; kr-mini-llm "
                        f"puts adapters on the last N of its {depth} blocks")
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", 8))
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    params = LoRAParameters(rank=r, scale=scale, dropout=float(cfg.get("lora_dropout", 0.0)), keys=keys)
    return len(layers), params, bool(cfg.get("use_dora"))


def import_peft(model, peft_dir: str | os.PathLike) -> tuple:
    """Puts the PEFT adapters of `peft_dir` on `model` (unfused); returns (num_layers, LoRAParameters, dora)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    peft_dir = Path(peft_dir)
    cfg_file, weights = peft_dir / PEFT_CONFIG, peft_dir / PEFT_WEIGHTS
    if not cfg_file.is_file():
        raise LoRAError(f"{peft_dir}: no {PEFT_CONFIG}; not a PEFT adapter directory")
    if not weights.is_file():
        hint = " (adapter_model.bin: re-save with safe_serialization=True)" if (peft_dir / "adapter_model.bin").exists() else ""
        raise LoRAError(f"{peft_dir}: no {PEFT_WEIGHTS}{hint}")
    try:
        cfg = json.loads(cfg_file.read_text())
        tensors = load_file(str(weights))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise LoRAError(f"{peft_dir}: unreadable PEFT adapter ({e})") from None
    num_layers, params, dora = _peft_settings(cfg, str(cfg_file), len(model.layers))
    ours = {}
    pattern = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(layers\.\d+\.\w+\.\w+)\."
                         r"(?:lora_([AB])(?:\.[\w-]+)?\.weight|lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?)$")
    for name, t in tensors.items():
        m = pattern.match(name)
        if m is None:
            raise LoRAError(f"{weights}: tensor {name!r} is not a LoRA A/B weight (or DoRA magnitude) of a decoder block")
        ours[f"{m.group(1)}.lora_{m.group(2) or 'magnitude'}"] = t
    apply_lora(model, num_layers, params, dora=dora)
    copy_adapter_tensors(model, ours, str(weights))
    return num_layers, params, dora


def peft_to_adapter_dir(base, peft_dir, adapter_path) -> Path:
    """Imports PEFT adapters onto `base` (lora.base.BaseModel) and writes an adapter directory of ours."""
    fingerprint = model_fingerprint(base.model)
    num_layers, params, dora = import_peft(base.model, peft_dir)
    out = Path(adapter_path)
    write_adapter_config(out, {"model": str(base.source), "base_model_fingerprint": fingerprint,
                               "fine_tune_type": "dora" if dora else "lora", "num_layers": num_layers,
                               "lora_parameters": params.to_dict(), "imported_from_peft": str(peft_dir)})
    save_adapter_weights(out / ADAPTER_WEIGHTS, base.model, fingerprint, step=0)
    return out
