"""host_memory.keep_freed_memory: glibc's malloc keeps what a training step frees. Each case runs in
a fresh interpreter: the setting is process-wide and decided once per process."""
import os
import subprocess
import sys
import textwrap

import pytest

from kr_mini_llm.host_memory import ENV

# mmapped bytes (mallinfo2's hblkhd) before and after allocating a block of `size` bytes: grows by the
# block where malloc serves it by its own mmap, stays where it comes from the heap.
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from kr_mini_llm.host_memory import keep_freed_memory, describe

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    import torch
    from kr_mini_llm.host_memory import for_training
    how = sys.argv[2]
    cpu = torch.device("cpu")
    kept = {"keep": keep_freed_memory, "bf16": lambda: for_training(cpu, torch.bfloat16),
            "fp32": lambda: for_training(cpu, None)}[how]()
    size = int(sys.argv[1])
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(size)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(p)
    print(json.dumps({"kept": kept, "mmapped": grew, "describe": describe()}))
""")


def probe(size: int, env_value: str | None, how: str = "keep") -> dict:
    import json

    env = dict(os.environ)
    env.pop(ENV, None)
    if env_value is not None:
        env[ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, str(size), how], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                                 reason="glibc's malloc only")


@linux_glibc
def test_a_block_under_32_mib_comes_from_the_heap():
    got = probe(20 << 20, None)
    assert got["kept"] is True
    assert got["mmapped"] == 0, got
    assert "keeps freed memory" in got["describe"]


@linux_glibc
def test_system_leaves_glibc_as_it_is():
    # A fresh process under glibc's defaults serves 20 MiB by its own mmap (threshold 128 KiB, raised
    # only by freeing larger mmapped blocks, which this probe has not done before the malloc).
    got = probe(20 << 20, "system")
    assert got["kept"] is False
    assert got["mmapped"] >= 20 << 20, got
    assert got["describe"] == "the system's malloc settings"


@linux_glibc
def test_training_keeps_freed_memory_for_bf16_steps_only():
    assert probe(20 << 20, None, "bf16")["mmapped"] == 0
    fp32 = probe(20 << 20, None, "fp32")
    assert fp32["kept"] is False and fp32["mmapped"] >= 20 << 20


@linux_glibc
def test_blocks_past_the_largest_threshold_are_still_mmapped():
    assert probe(64 << 20, None)["mmapped"] >= 64 << 20


def test_a_bad_setting_is_refused_by_name():
    code = "from kr_mini_llm.host_memory import keep_freed_memory; keep_freed_memory()"
    env = dict(os.environ, **{ENV: "fast"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert f"{ENV}='fast'" in out.stderr and "'keep'" in out.stderr and "'system'" in out.stderr
