"""Timing, memory and environment helpers shared by the benchmark scripts."""
from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def median_time(fn, repeats: int = 7, warmup: int = 2, budget_s: float = 20.0) -> float:
    """Median wall time of fn() in seconds; fewer repeats (at least 3) when one call is slow."""
    for _ in range(warmup):
        fn()
    times = []
    for i in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i >= 2 and sum(times) > budget_s:
            break
    return statistics.median(times)


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1, budget_s: float = 60.0) -> dict:
    """Median wall time (s) of each fn, the contenders taking turns call by call, so a noisy
    neighbour on a shared machine slows them alike; fewer repeats (at least 3) when slow."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    for i in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory(fn) -> int:
    """Peak bytes allocated by torch on the CPU while fn() runs (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def ratio(baseline, ours) -> str:
    return "–" if baseline is None else f"{baseline / ours:.2f}x"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --isa LEVEL: the limits an older x86 CPU would impose, set for a child process before torch
# loads (oneDNN, MKL and ATen read them once), and the build of our kernels for that level.
ISA_LEVELS = {
    "native": {},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ATEN_CPU_CAPABILITY": "avx512"},  # Skylake-X / Cascade Lake: no bf16 dot products
    "avx512-no-amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                      "ATEN_CPU_CAPABILITY": "avx512"},  # Zen 4 / Cooper Lake: AVX512-BF16, no AMX
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2"},  # most laptops and desktops
}
_KERNEL_BUILD = {"native": None, "avx512": "avx512", "avx512-no-amx": "avx512", "avx2": "avx2"}
ROOT = Path(__file__).resolve().parents[1]


def add_isa_argument(parser) -> None:
    parser.add_argument("--isa", choices=list(ISA_LEVELS), default="native",
                        help="run under an older x86 level: oneDNN/MKL/ATen capped and our kernels built "
                             "for it (build/isa-LEVEL, built on first use); native: no limits")


def kernel_build(level: str) -> Path:
    """Builds (or brings up to date) our kernels for an ISA level in build/isa-LEVEL; its _C path."""
    isa = _KERNEL_BUILD[level]
    out = ROOT / "build" / f"isa-{isa}"
    env = dict(os.environ, KR_MINI_LLM_ISA=isa)
    cmd = [sys.executable, "setup.py", "build_ext", "--build-temp", str(out / "tmp"), "--build-lib", str(out / "lib")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    libs = sorted((out / "lib" / "kr_mini_llm").glob("_C*.so"))
    if done.returncode != 0 or not libs:
        sys.exit(f"building the kernels for --isa {level} failed ({' '.join(cmd)}):\n{done.stdout[-3000:]}"
                 f"{done.stderr[-3000:]}")
    return libs[0]


def isa_env(level: str) -> dict:
    """The environment of a process that runs at `level` (builds its kernels if needed)."""
    env = dict(os.environ, KR_MINI_LLM_ISA_LEVEL=level)
    if level != "native":
        env.update(ISA_LEVELS[level], KR_MINI_LLM_NATIVE_LIB=str(kernel_build(level)))
    return env


def enter_isa(level: str) -> None:
    """Re-executes this script under `level`'s limits and kernel build (they must be in place
    before torch loads); returns at once in the child, or for native."""
    if level == "native" or os.environ.get("KR_MINI_LLM_ISA_LEVEL") == level:
        return
    env = isa_env(level)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def isa_level() -> str:
    return os.environ.get("KR_MINI_LLM_ISA_LEVEL", "native")


def bf16_native() -> tuple[bool, str]:
    """Whether bf16 is native here under this process's oneDNN cap (the training precision rule)."""
    from kr_mini_llm.device import cpu_flags, native_bf16_reason

    return native_bf16_reason(cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA"))


_PEAKS: dict = {}


def measured_peaks(seconds: float = 1.0) -> dict:
    """Peak GFLOP/s measured now on all threads: fp32 FMA peak at the kernels' ISA, bf16 dot-product
    peak of oneDNN's brgemm (None where bf16 is not native). Cached per thread count."""
    from kr_mini_llm import _C

    key = torch.get_num_threads()
    if key not in _PEAKS:
        fp32 = _C.peak_gflops(False, seconds)
        bf16 = _C.peak_gflops(True, seconds) if bf16_native()[0] else 0.0
        _PEAKS[key] = {"float32": fp32, "bfloat16": bf16 or None}
    return _PEAKS[key]


def mfu(flops_per_s: float, dtype) -> str:
    peak = measured_peaks().get(str(dtype).removeprefix("torch."))
    return f"{100 * flops_per_s / (peak * 1e9):.0f}%" if peak else "–"


_SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16", "amx_fp16", "asimd", "sve", "bf16")


def environment() -> list[str]:
    from kr_mini_llm import _C, ops
    from kr_mini_llm.device import cpu_flags

    level = isa_level()
    caps = ", ".join(f"{k}={v}" for k, v in ISA_LEVELS[level].items()) or "no limits"
    flags = " ".join(f for f in _SHOWN_FLAGS if f in cpu_flags())
    peaks = measured_peaks()
    bf16 = f"{peaks['bfloat16']:,.0f}" if peaks["bfloat16"] else f"not native ({bf16_native()[1]})"
    return [
        f"- Machine: {cpu_name()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}",
        f"- CPU flags (of interest): {flags}",
        f"- ISA level: **{level}** ({caps}); kr_mini_llm kernels built for {ops.simd_capability()}, "
        f"bf16 tile GEMMs on {'native dot products' if _C.vnni_tile_gemm(False) else 'fp32 (widened)'}",
        f"- Peak measured in this run on {torch.get_num_threads()} threads: fp32 FMA {peaks['float32']:,.0f} GFLOP/s "
        f"({ops.simd_capability()} FMA chains), bf16 {bf16} GFLOP/s (oneDNN brgemm dot products, cache-resident "
        f"tiles); MFU columns are against these",
        f"- torch {torch.__version__}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def write_report(path, lines: list[str], start: float) -> None:
    """Writes the markdown report with the total time; creates the folder."""
    from pathlib import Path

    lines = lines + [f"\nTotal benchmark time: {time.time() - start:.0f} s"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
