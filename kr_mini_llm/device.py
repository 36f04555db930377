"""Device choice (cuda -> mps -> cpu), the mixed-precision dtype that suits it, and the peak memory
of this process on a device (for the log lines, "Peak mem 1.234 GB") or of a piece of code
(`allocated_peak_bytes`)."""
from __future__ import annotations

import functools
import sys

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{requested}' was asked for but CUDA is not available here; "
                           "use device: auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{requested}' was asked for but MPS is not available here "
                           "(needs Apple Silicon and a torch built with MPS); use device: auto or cpu")
    return dev


# oneDNN's x86 ISA levels in order (ONEDNN_MAX_CPU_ISA caps the one it uses).
ONEDNN_ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                    "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                    "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """ISA feature names of this CPU, lower case (x86: avx512_bf16, amx_bf16, ...; Arm: bf16)."""
    import platform
    import subprocess

    flags = set()
    get_caps = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8
    if get_caps is not None:
        flags |= {k for k, v in get_caps().items() if v is True}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags |= set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        if out.stdout.strip() == "1":
            flags.add("bf16")
    return frozenset(flags)


def native_bf16_reason(flags: frozenset[str] | set[str], onednn_max_isa: str | None = None) -> tuple[bool, str]:
    """(whether this CPU multiplies bf16 natively, why). Native: AMX or AVX512-BF16 dot products on
    x86 (and oneDNN not capped below them by ONEDNN_MAX_CPU_ISA), the BF16 extension on Arm."""
    x86 = {"amx_bf16", "avx512_bf16"} & set(flags)
    if x86:
        cap = (onednn_max_isa or "").upper()
        if cap in ONEDNN_ISA_ORDER and ONEDNN_ISA_ORDER.index(cap) < ONEDNN_ISA_ORDER.index("AVX512_CORE_BF16"):
            return False, f"the CPU has {'/'.join(sorted(x86))} but ONEDNN_MAX_CPU_ISA={onednn_max_isa} caps oneDNN below it"
        if cap in ONEDNN_ISA_ORDER and ONEDNN_ISA_ORDER.index(cap) < ONEDNN_ISA_ORDER.index("AVX10_1_512_AMX"):
            x86 -= {"amx_bf16"}  # capped below AMX: oneDNN uses the AVX512-BF16 dot products only
        if x86:
            return True, f"the CPU has native bf16 dot products ({'/'.join(sorted(x86))})"
        return False, f"the CPU has amx_bf16 but ONEDNN_MAX_CPU_ISA={onednn_max_isa} caps oneDNN below it"
    if "bf16" in flags:
        return True, "the CPU has native bf16 dot products (Arm BF16)"
    return False, "the CPU has no native bf16 dot products (no avx512_bf16/amx_bf16 or Arm BF16)"


def native_bf16_here(flags: frozenset[str] | set[str] | None = None,
                     onednn_max_isa: str | None = None) -> tuple[bool, str]:
    """native_bf16_reason for this machine: its CPU flags and oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA),
    unless given. The first half of bf16_matmuls_pay."""
    import os

    if flags is None:
        flags = cpu_flags()
    if onednn_max_isa is None:
        onednn_max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return native_bf16_reason(flags, onednn_max_isa)


# bf16 autocast also pays a cast of every weight and of its gradient (about 7% of a bf16 step on a
# CPU with AMX), so it is taken only where bf16 matmuls beat fp32 ones by more than that.
BF16_MIN_SPEEDUP = 1.15
# The GEMM timed for the choice: tokens x inputs -> outputs, one linear layer at a few hundred tokens.
_RATE_SHAPE = (512, 1024, 1024)


def best_seconds(fns, repeats: int) -> list[float]:
    """The best wall time of each no-argument function over `repeats` rounds, after a warm-up call
    of each, the functions taking turns. Autocast is off and autograd too, whatever the caller has
    on: what is timed is each function's own GEMM, in its own dtype."""
    import time

    best = [float("inf")] * len(fns)
    with torch.autocast("cpu", enabled=False), torch.no_grad():
        for fn in fns:
            fn()
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


@functools.lru_cache(maxsize=1)
def matmul_gflops() -> tuple[float, float]:
    """(bf16, fp32) GFLOP/s of F.linear at _RATE_SHAPE on this machine and its current threads, best
    of 5: the GEMMs autocast's linear layers run. Measured once per process (~0.1 s); a private
    generator leaves the caller's random stream alone."""
    m, k, n = _RATE_SHAPE
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    xb, wb = x.bfloat16(), w.bfloat16()
    seconds = best_seconds([lambda: torch.nn.functional.linear(xb, wb), lambda: torch.nn.functional.linear(x, w)], 5)
    bf16, fp32 = (2 * m * k * n / t / 1e9 for t in seconds)
    return bf16, fp32


def bf16_matmuls_pay(flags: frozenset[str] | set[str] | None = None, onednn_max_isa: str | None = None,
                     rates: tuple[float, float] | None = None) -> tuple[bool, str]:
    """(whether bf16 matmuls are worth taking over fp32 ones on this CPU, why). Only where bf16 is
    native (native_bf16_here), and there only where it measures at least BF16_MIN_SPEEDUP x fp32:
    AVX512-BF16 without AMX can be slower than fp32 (a Xeon capped below AMX: about 220-230 against
    350-360 GFLOP/s) or twice as fast (AMD Zen 4). flags, onednn_max_isa and rates (bf16, fp32 GFLOP/s)
    default to this machine's; tests inject them."""
    native, why = native_bf16_here(flags, onednn_max_isa)
    if not native:
        return False, f"{why}, where bf16 is emulated and slower than fp32"
    bf16, fp32 = rates if rates is not None else matmul_gflops()
    speed = f"bf16 matmuls measured at {bf16:,.0f} GFLOP/s here against fp32's {fp32:,.0f}"
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        return True, f"{why}; {speed}"
    return False, f"{why}, but {speed} (bf16 needs {BF16_MIN_SPEEDUP}x to pay for its casts)"


@functools.lru_cache(maxsize=1)
def bf16_pays_here() -> tuple[bool, str]:
    """bf16_matmuls_pay for this machine, decided once per process: the one answer that autocast's
    choice, linear_cross_entropy and inference prefill all read."""
    return bf16_matmuls_pay()


def precision_choice(device: torch.device, mixed_precision: bool, precision: str = "auto",
                     flags: frozenset[str] | set[str] | None = None, onednn_max_isa: str | None = None,
                     rates: tuple[float, float] | None = None) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, the reason in one line). `precision` (train.precision)
    forces bf16/fp16; "auto" takes bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, and
    on a CPU bf16 only where bf16_matmuls_pay: elsewhere bf16 is emulated, or native but no faster
    than fp32. flags/onednn_max_isa/rates default to this machine's (tests inject them)."""
    if not mixed_precision:
        return None, "fp32 (mixed_precision is off)"
    if precision in ("bf16", "fp16"):
        return (torch.bfloat16 if precision == "bf16" else torch.float16), f"{precision} (train.precision: {precision})"
    if device.type == "mps":
        return torch.float16, "fp16 (auto on MPS)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 (auto on CUDA)"
        return torch.float16, "fp16 (auto: this GPU has no bf16)"
    if device.type != "cpu":
        return torch.bfloat16, f"bf16 (auto on {device.type})"
    injected = flags is not None or onednn_max_isa is not None or rates is not None
    pays, why = bf16_matmuls_pay(flags, onednn_max_isa, rates) if injected else bf16_pays_here()
    if pays:
        return torch.bfloat16, f"bf16 (auto: {why})"
    return None, f"fp32 (auto: {why}; train.precision: bf16 forces it)"


def apply_memory_limit(device: torch.device, fraction: float) -> None:
    if device.type == "mps":
        torch.mps.set_per_process_memory_fraction(fraction)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by torch; MPS: memory the driver holds now; CPU: peak resident set
    size of the process (everything it ever held at once, weights included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def peak_memory_gb(device: torch.device) -> float:
    return peak_memory_bytes(device) / 1e9


def allocated_peak_bytes(fn, device: torch.device | str = "cpu") -> int:
    """Peak of the bytes torch allocates on `device` while fn() runs, above what was allocated
    before. CUDA: the caching allocator's statistics; CPU: the allocation and free events of
    the profiler's memory tracking (exact, whatever else the machine runs, unlike resident set
    size, which counts the allocator's slack and the libraries too)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"allocated_peak_bytes: no allocator statistics for {device.type}; use cpu or cuda")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return int(peak)
