"""Timing, memory and environment helpers shared by the benchmark scripts."""
from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The machine's description is the package's (scripts/evaluate.py reports it too); the benchmarks import it from here.
from kr_mini_llm.eval.machine import (ISA_LEVELS, bf16_native, cpu_name, environment,  # noqa: E402,F401
                                     isa_level, measured_peaks)


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


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1, budget_s: float = 60.0,
                        settle: int = 0) -> dict:
    """Median wall time (s) of each fn, the contenders taking turns call by call, so a noisy
    neighbour on a shared machine slows them alike; fewer repeats (at least 3) when slow.
    settle: untimed calls of the same fn before each timed one, so a timed call finds the
    process's memory as its own previous call left it, not as another contender's did (a
    training step after another model's step pays for page faults no training run sees)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    for i in range(repeats):
        for k, fn in fns.items():
            for _ in range(settle):
                fn()
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


# --isa LEVEL: the limits an older x86 CPU would impose (ISA_LEVELS, kr_mini_llm/eval/machine.py),
# set for a child process before torch loads (oneDNN, MKL and ATen read them once), and the build
# of our kernels for that level.
_KERNEL_BUILD = {"native": None, "avx512": "avx512", "avx512-no-amx": "avx512-bf16", "avx2": "avx2"}
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
        # Inductor's own cache per level: its keys leave out the ISA, and on an AVX-512 CPU a kernel
        # compiled natively, loaded again under ATEN_CPU_CAPABILITY=avx2, computed wrong values
        # (torch 2.13, an AMD Zen 4).
        env["TORCHINDUCTOR_CACHE_DIR"] = str(ROOT / "build" / f"inductor-{level}")
    return env


def enter_isa(level: str) -> None:
    """Re-executes this script under `level`'s limits and kernel build (they must be in place
    before torch loads); returns at once in the child, or for native."""
    if level == "native" or os.environ.get("KR_MINI_LLM_ISA_LEVEL") == level:
        return
    env = isa_env(level)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def mfu(flops_per_s: float, dtype) -> str:
    peak = measured_peaks().get(str(dtype).removeprefix("torch."))
    return f"{100 * flops_per_s / (peak * 1e9):.0f}%" if peak else "–"


def write_report(path, lines: list[str], start: float) -> None:
    """Writes the markdown report with the total time (atomically: a benchmark rewrites its own
    report in benchmarks/, and an interrupted run must not leave half of it); creates the folder."""
    from pathlib import Path

    from kr_mini_llm.io.atomic import atomic_write_text

    lines = lines + [f"\nTotal benchmark time: {time.time() - start:.0f} s"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")
