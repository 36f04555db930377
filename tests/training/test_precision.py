"""The mixed-precision choice: bf16 on a CPU only where it multiplies bf16 natively and measures
faster than fp32 (flags and GEMM rates injected)."""
import pytest
import torch

from kr_mini_llm.device import (BF16_MIN_SPEEDUP, bf16_matmuls_pay, cpu_flags, matmul_gflops, native_bf16_here,
                                precision_choice)

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
SKYLAKE_X = {"avx2", "avx512f", "avx512bw"}
LAPTOP_AVX2 = {"avx2", "fma"}
GRAVITON3 = {"asimd", "sve", "bf16"}
FAST_BF16 = (1500.0, 450.0)  # (bf16, fp32) GFLOP/s: AMX, or Zen 4's AVX512-BF16


@pytest.mark.parametrize("flags, expect", [(SAPPHIRE_RAPIDS, torch.bfloat16), (ZEN4, torch.bfloat16),
                                           (GRAVITON3, torch.bfloat16), (SKYLAKE_X, None), (LAPTOP_AVX2, None)])
def test_auto_takes_bf16_only_with_native_dot_products(flags, expect):
    dtype, why = precision_choice(CPU, True, "auto", flags=flags, onednn_max_isa="", rates=FAST_BF16)
    assert dtype == expect, why
    assert why.startswith("bf16" if expect else "fp32")
    if expect is None:
        assert "no native bf16" in why and "train.precision: bf16" in why  # says why and how to force


@pytest.mark.parametrize("cap, expect", [("AVX2", None), ("avx512_core", None), ("AVX512_CORE_BF16", torch.bfloat16),
                                         ("AVX512_CORE_AMX", torch.bfloat16), ("ALL", torch.bfloat16)])
def test_onednn_isa_cap_counts(cap, expect):
    dtype, why = precision_choice(CPU, True, "auto", flags=SAPPHIRE_RAPIDS, onednn_max_isa=cap, rates=FAST_BF16)
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


@pytest.mark.parametrize("rates, expect", [((240.0, 470.0), None), ((470.0, 470.0), None),
                                           ((BF16_MIN_SPEEDUP * 400.0, 400.0), torch.bfloat16),
                                           ((900.0, 450.0), torch.bfloat16)])
def test_native_bf16_is_taken_only_where_it_measures_faster(rates, expect):
    """AVX512-BF16 without AMX: a Xeon capped below AMX multiplies bf16 at half its fp32 rate, a Zen 4
    at twice it. The choice follows the measured rates and says them."""
    dtype, why = precision_choice(CPU, True, "auto", flags=ZEN4, onednn_max_isa="", rates=rates)
    assert dtype == expect, why
    assert f"{rates[0]:,.0f} GFLOP/s" in why and f"{rates[1]:,.0f}" in why
    if expect is None:
        assert why.startswith("fp32") and "train.precision: bf16" in why
    assert precision_choice(CPU, True, "bf16", flags=ZEN4, rates=rates)[0] == torch.bfloat16  # forcing still works


def test_emulated_bf16_is_never_timed():
    pays, why = bf16_matmuls_pay(LAPTOP_AVX2, "", rates=None)  # would measure if it got past the flags
    assert not pays and "emulated" in why and "GFLOP/s" not in why


def test_capped_below_amx_names_only_the_dot_products_left():
    pays, why = bf16_matmuls_pay(SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", rates=FAST_BF16)
    assert pays and "avx512_bf16" in why and "amx" not in why


def test_this_machine_rates_are_measured_and_decide():
    bf16, fp32 = matmul_gflops()
    assert bf16 > 0 and fp32 > 0
    dtype, why = precision_choice(CPU, True, "auto")
    native, _ = native_bf16_here()
    assert (dtype == torch.bfloat16) == (native and bf16 >= BF16_MIN_SPEEDUP * fp32), why
    state = torch.random.get_rng_state()
    matmul_gflops.__wrapped__()  # a fresh timing, the process's cached one left as it is
    assert torch.equal(state, torch.random.get_rng_state())  # the timing leaves the caller's random stream alone


def test_rates_are_timed_without_the_callers_autocast(monkeypatch):
    """The first timing can happen inside a training step (linear_cross_entropy asks lazily): under
    autocast the fp32 GEMM would silently run in bf16 and the rates would be wrong for the process."""
    seen = []
    real = torch.nn.functional.linear

    def spy(x, w, *rest):
        out = real(x, w, *rest)
        seen.append((x.dtype, out.dtype))
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.enable_grad():
        matmul_gflops.__wrapped__()
    assert (torch.float32, torch.float32) in seen and (torch.bfloat16, torch.bfloat16) in seen
    assert all(x == out for x, out in seen)
