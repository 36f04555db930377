"""host_memory: glibc's malloc keeps what a training step frees. Each case runs in a fresh
interpreter: the setting is process-wide and decided once per process."""
import ctypes
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from kr_mini_llm import host_memory
from kr_mini_llm.host_memory import ENV

# mmapped bytes (mallinfo2's hblkhd) before and after allocating a block of `size` bytes: grows by the
# block where malloc serves it by its own mmap, stays where it comes from the heap. The block is
# taken before torch is imported (for_training's rule imports it), so nothing freed earlier has
# raised glibc's dynamic threshold.
PROBE = textwrap.dedent("""
    import ctypes, importlib.util, json, sys
    # the module alone, not the package (whose import brings torch in)
    spec = importlib.util.spec_from_file_location("host_memory", sys.argv[3])
    host_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_memory)

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, how = int(sys.argv[1]), sys.argv[2]
    kept = host_memory.keep_freed_memory() if how == "keep" else None
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(size)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(p)
    if how != "keep":
        import torch
        amp = torch.bfloat16 if how == "bf16" else None
        kept = host_memory.for_training(torch.device("cpu"), amp)
        # whether the rule asked for the setting at all (keep_freed_memory runs once, cached)
        asked = host_memory.keep_freed_memory.cache_info().currsize == 1
        kept = [kept, asked]
    print(json.dumps({"kept": kept, "mmapped": grew, "describe": host_memory.describe(),
                      "torch_before": "torch" in sys.modules and how == "keep"}))
""")


def probe(size: int, env_value: str | None, how: str = "keep") -> dict:
    env = dict(os.environ)
    env.pop(ENV, None)
    if env_value is not None:
        env[ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, str(size), how, host_memory.__file__], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33


glibc = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's malloc (2.33 or newer) only")


@glibc
def test_a_block_under_32_mib_comes_from_the_heap():
    got = probe(20 << 20, None)
    assert got["kept"] is True and got["torch_before"] is False
    assert got["mmapped"] == 0, got
    assert "keeps freed memory" in got["describe"]


@glibc
def test_system_leaves_glibc_as_it_is():
    # A fresh interpreter under glibc's defaults serves 20 MiB by its own mmap (threshold 128 KiB,
    # raised only by freeing a larger mmapped block, which nothing has done before the probe's).
    got = probe(20 << 20, "system")
    assert got["kept"] is False
    assert got["mmapped"] >= 20 << 20, got
    assert got["describe"] == "the system's malloc settings"


@glibc
def test_training_keeps_freed_memory_for_bf16_steps_only():
    assert probe(1 << 20, None, "bf16")["kept"] == [True, True]
    fp32 = probe(1 << 20, None, "fp32")
    assert fp32["kept"] == [False, False] and fp32["describe"] == "the system's malloc settings"


def test_a_bad_setting_is_refused_by_name():
    code = "from kr_mini_llm.host_memory import keep_freed_memory; keep_freed_memory()"
    env = dict(os.environ, **{ENV: "fast"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert f"{ENV}='fast'" in out.stderr and "'keep'" in out.stderr and "'system'" in out.stderr
