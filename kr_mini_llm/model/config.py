"""TransformerConfig: the model's hyper-parameters.

Parsing, validation, the parameter count and YAML output live in C++ (csrc/config, yaml-cpp);
this class adds what Python needs: keyword construction, attribute checks, equality,
pickling and `replace`.

    config = TransformerConfig.from_yaml("configs/model_small.yaml")
    config = TransformerConfig.medium()
    config.num_layers = 20
    print(config)
    print(f"{config.num_parameters / 1e6:.1f}M")
"""
from __future__ import annotations

import difflib
import os
from typing import Any

from .. import _C
from ..errors import ConfigError


def check_config_file(path: str | os.PathLike, what: str) -> str:
    """`path` as a string, after refusing a directory or an empty file (YAML reads both as "no
    settings", which would silently mean all defaults)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a {what} file; pass the YAML file itself "
                          "(e.g. configs/model_tiny.yaml, configs/training_demo.yaml)")
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 16)
    except OSError:
        return path  # the reader names a missing or unreadable file
    if not any(line.strip() and not line.lstrip().startswith(b"#") for line in text.splitlines()):
        raise ConfigError(f"{path}: the {what} is empty (no settings in it); give a YAML file with the "
                          "settings (see configs/ for examples)")
    return path

# The field list comes from the C++ table (KR_TRANSFORMER_CONFIG_FIELDS), never spelled here.
_FIELD_TYPES = {name: kind for name, kind, _ in _C.TransformerConfig.fields()}
FIELD_DOCS = {name: doc for name, _, doc in _C.TransformerConfig.fields()}
FIELDS = tuple(_FIELD_TYPES)


def _unknown(name: str) -> str:
    guess = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return f"TransformerConfig has no field '{name}'{hint}. Fields: {', '.join(FIELDS)}"


class TransformerConfig:
    """Hyper-parameters of the Llama/Qwen3-style decoder (see configs/model_*.yaml)."""

    __slots__ = ("_c",)

    def __init__(self, **fields: Any):
        for name in fields:
            if name not in _FIELD_TYPES:
                raise TypeError(_unknown(name))
        object.__setattr__(self, "_c", _C.TransformerConfig.from_dict(fields, "TransformerConfig(...)"))

    @classmethod
    def _wrap(cls, native) -> "TransformerConfig":
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_c", native)
        return obj

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TransformerConfig":
        return cls._wrap(_C.TransformerConfig.from_yaml(check_config_file(path, "model config")))

    @classmethod
    def from_dict(cls, d: dict, where: str = "<dict>") -> "TransformerConfig":
        return cls._wrap(_C.TransformerConfig.from_dict(dict(d), where))

    @classmethod
    def tiny(cls) -> "TransformerConfig":
        return cls._wrap(_C.TransformerConfig.tiny())

    @classmethod
    def small(cls) -> "TransformerConfig":
        return cls._wrap(_C.TransformerConfig.small())

    @classmethod
    def medium(cls) -> "TransformerConfig":
        return cls._wrap(_C.TransformerConfig.medium())

    @classmethod
    def large(cls) -> "TransformerConfig":
        return cls._wrap(_C.TransformerConfig.large())

    def replace(self, **changes: Any) -> "TransformerConfig":
        """A copy with some fields changed, validated as a whole."""
        for name in changes:
            if name not in _FIELD_TYPES:
                raise TypeError(_unknown(name))
        return TransformerConfig.from_dict({**self.to_dict(), **changes}, "replace(...)")

    # -- fields -----------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name in _FIELD_TYPES:
            return getattr(self._c, name)
        raise AttributeError(_unknown(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELD_TYPES:
            raise AttributeError(_unknown(name))
        kind = _FIELD_TYPES[name]
        if kind.startswith("int") and isinstance(value, bool) or kind == "bool" and not isinstance(value, bool):
            raise TypeError(f"TransformerConfig.{name} must be {kind}, got {value!r}")
        try:
            setattr(self._c, name, value)
        except TypeError:
            raise TypeError(f"TransformerConfig.{name} must be {kind}, got {value!r}") from None

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(FIELDS))

    @property
    def resolved_head_dim(self) -> int:
        """head_dim, or hidden_size // num_heads when head_dim is not set."""
        return self._c.resolved_head_dim

    @property
    def resolved_rope_scaling(self) -> dict | None:
        """rope_scaling as the RoPE tables take it (ops.rope_tables): every key of its type, the
        original context defaulting to max_seq_length as HF's does; None for plain RoPE."""
        return self._c.resolved_rope_scaling

    @property
    def num_parameters(self) -> int:
        """Exact parameter count of kr_mini_llm.model.Transformer(self)."""
        return self._c.num_parameters

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def estimate_memory(self, batch_size: int, seq_len: int, precision: str = "fp32", optimizer: str = "adamw",
                        gradient_checkpointing: bool = False):
        """Training memory of one optimizer step (parameters, gradients, optimizer state,
        activations, peak) as a MemoryEstimate; precision fp32 | bf16 | fp16 (autocast),
        optimizer adamw | adam | sgd_momentum | sgd. See model/memory_estimate.py."""
        from .memory_estimate import estimate_memory

        return estimate_memory(self, batch_size, seq_len, precision, optimizer, gradient_checkpointing)

    # -- checks and output -------------------------------------------------------------
    def validate(self) -> "TransformerConfig":
        """Raises ConfigError if the combination of values is impossible; returns self."""
        self._c.validate("TransformerConfig")
        return self

    def to_dict(self) -> dict:
        return self._c.to_dict()

    def to_yaml(self) -> str:
        return self._c.to_yaml()

    def save_yaml(self, path: str | os.PathLike) -> None:
        """Validates, then writes atomically (temporary file + rename)."""
        self._c.save_yaml(os.fspath(path))

    def __str__(self) -> str:
        return self._c.summary()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"TransformerConfig({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TransformerConfig):
            return NotImplemented
        return self._c == other._c

    __hash__ = None  # mutable

    def __reduce__(self):
        return (TransformerConfig.from_dict, (self.to_dict(),))

    def __copy__(self):
        return TransformerConfig._wrap(self._c.copy())

    def __deepcopy__(self, memo):
        return self.__copy__()
