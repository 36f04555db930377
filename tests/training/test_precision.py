"""The mixed-precision choice: bf16 on a CPU only where it multiplies bf16 natively (flags injected)."""
import pytest
import torch

from kr_mini_llm.device import cpu_flags, precision_choice

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
SKYLAKE_X = {"avx2", "avx512f", "avx512bw"}
LAPTOP_AVX2 = {"avx2", "fma"}
GRAVITON3 = {"asimd", "sve", "bf16"}


@pytest.mark.parametrize("flags, expect", [(SAPPHIRE_RAPIDS, torch.bfloat16), (ZEN4, torch.bfloat16),
                                           (GRAVITON3, torch.bfloat16), (SKYLAKE_X, None), (LAPTOP_AVX2, None)])
def test_auto_takes_bf16_only_with_native_dot_products(flags, expect):
    dtype, why = precision_choice(CPU, True, "auto", flags=flags, onednn_max_isa="")
    assert dtype == expect, why
    assert why.startswith("bf16" if expect else "fp32")
    if expect is None:
        assert "no native bf16" in why and "train.precision: bf16" in why  # says why and how to force


@pytest.mark.parametrize("cap, expect", [("AVX2", None), ("avx512_core", None), ("AVX512_CORE_BF16", torch.bfloat16),
                                         ("AVX512_CORE_AMX", torch.bfloat16), ("ALL", torch.bfloat16)])
def test_onednn_isa_cap_counts(cap, expect):
    dtype, why = precision_choice(CPU, True, "auto", flags=SAPPHIRE_RAPIDS, onednn_max_isa=cap)
    assert dtype == expect, why
    if expect is None:
        assert cap in why


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, LAPTOP_AVX2])
def test_forced_precision_and_off(flags):
    assert precision_choice(CPU, True, "bf16", flags=flags)[0] == torch.bfloat16
    assert precision_choice(CPU, True, "fp16", flags=flags)[0] == torch.float16
    dtype, why = precision_choice(CPU, False, "bf16", flags=flags)
    assert dtype is None and "off" in why


def test_other_devices_unchanged():
    assert precision_choice(torch.device("mps"), True, "auto")[0] == torch.float16


def test_this_machine_flags_are_read():
    flags = cpu_flags()
    assert isinstance(flags, frozenset) and flags  # every CPU reports some ISA feature
