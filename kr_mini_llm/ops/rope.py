"""RoPE tables (cos, sin) for `rotary`, with linear, NTK and YaRN scaling.

The tables are half width, [..., head_dim / 2]: HF builds `cat(freqs, freqs)` of width head_dim
and the two halves are equal, so `rotary` reads each angle once. For float32 tables the numbers
are those HF transformers computes for the same settings (`modeling_rope_utils`, the Llama/Qwen3
rotary embedding): the same inverse frequencies, the same float32 angle `position * inv_freq`,
and YaRN's attention factor multiplied into cos and sin. This module does not import
transformers; the tests compare against it.

`scaling`: `TransformerConfig.resolved_rope_scaling`, or a `rope_scaling` / HF `rope_parameters`
dict in any spelling the config accepts. The C++ config parser reads and validates it
(`_C.normalize_rope_scaling`: the types, HF's names for them, key aliases, defaults and ranges are
written there only); this module computes with the normalised form it returns:

- None, {"type": "none"} (HF's "default"): plain RoPE, inv_freq = theta ** (-2i / head_dim).
- {"type": "linear", "factor": f}: position interpolation, inv_freq / f.
- {"type": "ntk", "factor": f, "original_max_position_embeddings": M [, "seq_len": L]}
  (HF's "dynamic"): HF's dynamic NTK evaluated at length L:
  theta' = theta * (f * max(L, M) / M - (f - 1)) ** (d / (d - 2)). L defaults to the length the
  tables cover (max position + 1), which is what a freshly built HF module computes for those
  positions. We evaluate it statelessly at that length rather than copying HF's cache (which
  keeps the frequencies of the longest length it has seen), so the tables of a sequence never
  depend on what ran before. Up to M the tables equal plain RoPE. Static NTK-aware scaling by
  alpha is the same formula at L = M * (alpha + f - 1) / f; the YaRN and linear types cover the
  rest. `seq_len` is the tables' own key, not the config's: it fixes L.
- {"type": "yarn", "factor": f, "original_max_position_embeddings": M, "beta_fast", "beta_slow",
  "attention_factor", "mscale", "mscale_all_dim", "truncate"}: HF's YaRN.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple, Union

import torch

from .. import _C


def _normalize_scaling(scaling: Optional[Mapping]) -> Tuple[Optional[dict], Optional[int]]:
    """(the scaling in the config parser's normalised form or None for plain RoPE, the fixed NTK
    length its "seq_len" gives or None)."""
    if scaling is None:
        return None, None
    if not isinstance(scaling, Mapping):
        raise TypeError(f"rope_tables: scaling must be None or a dict, got {type(scaling).__name__}")
    s = dict(scaling)
    seq_len = s.pop("seq_len", None)
    s = _C.normalize_rope_scaling(s, "rope_tables")
    if seq_len is not None and (s is None or s["type"] != "ntk"):
        raise ValueError("rope_tables: scaling's seq_len fixes the length ntk scaling is evaluated at; "
                         f"{'plain RoPE' if s is None else s['type'] + ' scaling'} takes none, remove it")
    return s, seq_len


def _check_head_dim(head_dim: int) -> None:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope_tables: head_dim must be an even int >= 2, got {head_dim!r}")


def _default_inv_freq(head_dim: int, base: float, dtype: torch.dtype) -> torch.Tensor:
    # HF: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim))


def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling: Optional[Mapping] = None,
                  seq_len: Optional[int] = None, dtype: torch.dtype = torch.float32
                  ) -> Tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] (CPU) and the attention factor that scales cos/sin.

    `seq_len` is the length dynamic NTK scaling is evaluated at (see the module doc); the other
    types ignore it. With dtype float32 the numbers are HF's.
    """
    _check_head_dim(head_dim)
    if not (isinstance(theta, (int, float)) and not isinstance(theta, bool) and theta > 0):
        raise ValueError(f"rope_tables: theta must be a positive number, got {theta!r}")
    s, fixed_len = _normalize_scaling(scaling)
    dim, base = head_dim, float(theta)
    if s is None:
        return _default_inv_freq(dim, base, dtype), 1.0
    kind, factor = s["type"], s["factor"]
    if kind == "linear":
        return _default_inv_freq(dim, base, dtype) / factor, 1.0
    m = s["original_max_position_embeddings"]
    if kind == "ntk":
        length = fixed_len if fixed_len is not None else seq_len
        length = m if length is None else max(int(length), m)
        if dim > 2:  # at dim 2 the only frequency is 1 for every base
            base = base * ((factor * length / m) - (factor - 1)) ** (dim / (dim - 2))
        return _default_inv_freq(dim, base, dtype), 1.0
    return _yarn_inv_freq(s, dim, base, dtype)


def _yarn_inv_freq(s: dict, dim: int, base: float, dtype: torch.dtype) -> Tuple[torch.Tensor, float]:
    """As HF's _compute_yarn_parameters."""
    factor, m = s["factor"], s["original_max_position_embeddings"]
    attention_factor, mscale, mscale_all_dim = s["attention_factor"], s["mscale"], s["mscale_all_dim"]

    def get_mscale(scale, ms=1.0):
        return 1.0 if scale <= 1 else 0.1 * ms * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)

    def correction_dim(num_rotations):
        return (dim * math.log(m / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(s["beta_fast"]), correction_dim(s["beta_slow"])
    if s["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF: prevent a singular ramp
    ramp = ((torch.arange(dim // 2, dtype=dtype) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype) / dim)
    inv_extrapolation = 1.0 / pos_freqs
    inv_interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = inv_interpolation * (1 - extrapolation_factor) + inv_extrapolation * extrapolation_factor
    return inv_freq, float(attention_factor)


def rope_tables(head_dim: int, positions: Union[int, torch.Tensor], theta: float = 10000.0,
                scaling: Optional[Mapping] = None, device=None, dtype: torch.dtype = torch.float32
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables for `rotary`.

    positions: an int n (positions 0..n-1, tables [n, head_dim/2]), a 1-D tensor of positions
    [T] (tables [T, head_dim/2]) or a 2-D tensor [B, T] of per-sequence positions (tables
    [B, T, head_dim/2], e.g. decoding sequences of different lengths).
    The angles are computed in float32 like HF (float64 when dtype is float64) and cast to dtype.
    """
    if isinstance(positions, torch.Tensor):
        if positions.dim() not in (1, 2) or positions.is_floating_point() or positions.is_complex():
            raise ValueError("rope_tables: positions must be an int or an integer tensor [T] or [B, T], "
                             f"got a {positions.dtype} tensor of shape {tuple(positions.shape)}")
        if device is None:
            device = positions.device
        pos = positions.to(device)
        seq_len = int(pos.max()) + 1 if pos.numel() else 0
    elif isinstance(positions, int) and not isinstance(positions, bool) and positions >= 0:
        pos = torch.arange(positions, device=device)
        seq_len = positions
    else:
        raise ValueError(f"rope_tables: positions must be an int >= 0 or an integer tensor, got {positions!r}")
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"rope_tables: dtype must be a floating dtype, got {dtype}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling, seq_len=seq_len, dtype=work)
    angles = pos[..., None].to(work) * inv_freq.to(device=pos.device)
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


__all__ = ["rope_tables", "rope_inv_freq"]
