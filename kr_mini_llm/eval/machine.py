"""The machine a measurement ran on, in the lines every report and benchmark starts with: CPU,
ISA flags and level, the fp32/bf16 peaks measured in the same run, torch, date."""
from __future__ import annotations

import os
import platform
import time

import torch

# --isa LEVEL of the benchmarks: the limits an older x86 CPU would impose, set for a child process
# before torch loads (oneDNN, MKL and ATen read them once; scripts/bench_common.py sets them).
ISA_LEVELS = {
    "native": {},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ATEN_CPU_CAPABILITY": "avx512"},  # Skylake-X / Cascade Lake: no bf16 dot products
    "avx512-no-amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                      "ATEN_CPU_CAPABILITY": "avx512"},  # Zen 4 / Cooper Lake: AVX512-BF16, no AMX
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2"},  # most laptops and desktops
}

_SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16", "amx_fp16", "asimd", "sve", "bf16")
_PEAKS: dict = {}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_level() -> str:
    return os.environ.get("KR_MINI_LLM_ISA_LEVEL", "native")


def bf16_native() -> tuple[bool, str]:
    """Whether bf16 is native here under this process's oneDNN cap (device.native_bf16_here: the
    first half of the training precision rule; the benchmarks' bf16 rows run where it holds)."""
    from ..device import native_bf16_here

    return native_bf16_here()


def measured_peaks(seconds: float = 1.0) -> dict:
    """Peak GFLOP/s measured now on all threads: fp32 FMA peak at the kernels' ISA, bf16 dot-product
    peak of oneDNN's brgemm (None where bf16 is not native). Cached per thread count."""
    from .. import _C

    key = torch.get_num_threads()
    if key not in _PEAKS:
        fp32 = _C.peak_gflops(False, seconds)
        bf16 = _C.peak_gflops(True, seconds) if bf16_native()[0] else 0.0
        _PEAKS[key] = {"float32": fp32, "bfloat16": bf16 or None}
    return _PEAKS[key]


def environment() -> list[str]:
    from .. import _C, host_memory, ops
    from ..device import cpu_flags

    level = isa_level()
    caps = ", ".join(f"{k}={v}" for k, v in ISA_LEVELS[level].items()) or "no limits"
    flags = " ".join(f for f in _SHOWN_FLAGS if f in cpu_flags())
    peaks = measured_peaks()
    bf16 = (f"{peaks['bfloat16']:,.0f} GFLOP/s (oneDNN brgemm dot products, cache-resident tiles)"
            if peaks["bfloat16"] else f"not native ({bf16_native()[1]})")
    return [
        f"- Machine: {cpu_name()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}",
        f"- CPU flags (of interest): {flags}",
        f"- ISA level: **{level}** ({caps}); kr_mini_llm kernels built for {ops.simd_capability()}, "
        f"bf16 tile GEMMs on {'native dot products' if _C.vnni_tile_gemm(False) else 'fp32 (widened)'}",
        f"- Peak measured in this run on {torch.get_num_threads()} threads: fp32 FMA {peaks['float32']:,.0f} GFLOP/s "
        f"({ops.simd_capability()} FMA chains), bf16 {bf16}; MFU columns are against these",
        f"- Host memory: {host_memory.describe()}",
        f"- torch {torch.__version__}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]
