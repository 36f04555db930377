#!/usr/bin/env bash
# Builds llama.cpp's benchmark tools for one x86 ISA level, so the generation benchmark can hold our
# kernels built for a level (scripts/bench_generate.py --isa LEVEL) against llama.cpp built for the
# same level, not against the build machine's best:
#
#   bash scripts/build_llama_cpp_isa.sh avx2            # -> $DIR-avx2/{src,build/bin}
#   python scripts/bench_generate.py --isa avx2 --llama-cpp $DIR-avx2 --tokenizer ...
#
# LEVEL: native | avx512-no-amx (AVX-512 with VNNI and BF16, as Zen 4) | avx2. The source is the
# one scripts/build_llama_cpp.sh fetched into $DIR (run that first); targets llama-bench and
# llama-batched-bench. DIR is ${KR_LLAMA_CPP_DIR:-$HOME/.cache/kr-mini-llm/llama.cpp}.
set -euo pipefail

LEVEL=${1:-}
DIR=${KR_LLAMA_CPP_DIR:-$HOME/.cache/kr-mini-llm/llama.cpp}
OUT="$DIR-$LEVEL"
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
fail() { echo "build_llama_cpp_isa.sh: $*" >&2; exit 1; }

case "$LEVEL" in
  native) FLAGS=(-DGGML_NATIVE=ON) ;;
  avx512-no-amx) FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                        -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
                        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
  avx2) FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
               -DGGML_AVX512=OFF) ;;
  *) fail "usage: build_llama_cpp_isa.sh native|avx512-no-amx|avx2" ;;
esac
[[ -f "$DIR/src/CMakeLists.txt" ]] || fail "no llama.cpp source in $DIR/src; run bash scripts/build_llama_cpp.sh first"

mkdir -p "$OUT"
ln -sfn "$DIR/src" "$OUT/src"
cmake -S "$DIR/src" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF "${FLAGS[@]}" \
  >"$OUT/build.log" 2>&1 || fail "cmake configure failed; see $OUT/build.log"
nice -n 10 cmake --build "$OUT/build" --config Release -j "$JOBS" --target llama-bench llama-batched-bench \
  >>"$OUT/build.log" 2>&1 || fail "cmake build failed; see $OUT/build.log"
echo "llama.cpp for $LEVEL: $OUT/build/bin"
