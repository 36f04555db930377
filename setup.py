"""Thin driver: CMake builds kr_mini_llm/_C against the torch that is installed.

Install with `pip install --no-build-isolation -e .` so the build sees that torch.
Environment: KR_MINI_LLM_NATIVE=0 builds portable code (no -march=native);
KR_MINI_LLM_ISA=avx2|avx512|avx512-bf16 builds for that x86 level instead of the build machine's (with
`build_ext --build-lib DIR` it lands in DIR/kr_mini_llm; see scripts/bench_common.py);
KR_MINI_LLM_BUILD_TYPE=Debug for a debug build; CMAKE_ARGS is passed through.
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            import torch
            import pybind11
        except ImportError as e:  # the usual mistake: build isolation hides torch
            raise RuntimeError(
                f"building kr_mini_llm needs {e.name} in this environment. Install torch and "
                "pybind11 first, then `pip install --no-build-isolation -e .`") from e
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("KR_MINI_LLM_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DKR_OUTPUT_DIR={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
        ]
        if os.environ.get("KR_MINI_LLM_NATIVE", "1") == "0":
            args.append("-DKR_NATIVE=OFF")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        if _has_ninja():
            args.append("-GNinja")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


def _has_ninja() -> bool:
    try:
        subprocess.run(["ninja", "--version"], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


setup(
    ext_modules=[CMakeExtension("kr_mini_llm._C")],
    cmdclass={"build_ext": CMakeBuild},
)
