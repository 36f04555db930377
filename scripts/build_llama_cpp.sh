#!/usr/bin/env bash
# Builds llama.cpp -- the source vendored in PyPI's llama-cpp-python sdist, pinned below -- into a
# cache outside the checkout, for the GGUF export tests (tests/export) and the generation benchmark:
#
#   $DIR/src/          llama.cpp source (convert_hf_to_gguf.py, gguf-py)
#   $DIR/build/bin/    llama-cli llama-completion llama-simple llama-bench llama-batched-bench
#                      (batch 1..N decode, scripts/bench_generate.py's comparison) llama-quantize
#                      llama-tokenize, and kr-llama-greedy (scripts/llama_cpp_greedy.cpp)
#
# DIR is ${KR_LLAMA_CPP_DIR:-$HOME/.cache/kr-mini-llm/llama.cpp}. A finished build is reused (the
# stamp file holds the version); one that lacks a target listed here builds just the missing ones. About 12 CPU-minutes the first time (~6-7 min on 2 idle cores; an
# hour on a busy shared 2-core machine). On failure, exits
# non-zero with one line saying why (the full log stays in $DIR/build.log).
#
#   bash scripts/build_llama_cpp.sh            # JOBS=N to change the build parallelism
set -euo pipefail

VERSION=0.3.36   # llama-cpp-python sdist; its vendor/llama.cpp is llama.cpp's gguf-py 0.19.0 era
DIR=${KR_LLAMA_CPP_DIR:-$HOME/.cache/kr-mini-llm/llama.cpp}
STAMP="$DIR/stamp"
HELPER_SRC="$(cd "$(dirname "$0")" && pwd)/llama_cpp_greedy.cpp"
TARGETS=(llama-cli llama-completion llama-simple llama-bench llama-batched-bench llama-quantize llama-tokenize)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

fail() { echo "build_llama_cpp.sh: $*" >&2; exit 1; }

have_binaries() {
  for t in "${TARGETS[@]}" kr-llama-greedy; do [[ -x "$DIR/build/bin/$t" ]] || return 1; done
}

build_helper() {
  # Token ids in, greedy token ids out: the oracle the export tests compare our Generator with.
  c++ -std=c++17 -O2 "$HELPER_SRC" -o "$DIR/build/bin/kr-llama-greedy" \
    -I"$DIR/src/include" -I"$DIR/src/ggml/include" -L"$DIR/build/bin" \
    -lllama -lggml -lggml-base -Wl,-rpath,"$DIR/build/bin" >>"$DIR/build.log" 2>&1 \
    || fail "compiling $HELPER_SRC failed; see $DIR/build.log"
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION" ]]; then
  if ! have_binaries; then  # a build of this version from before a target was added: build the rest
    echo "llama.cpp $VERSION in $DIR: building the missing targets; log: $DIR/build.log"
    nice -n 10 cmake --build "$DIR/build" --config Release -j "$JOBS" --target "${TARGETS[@]}" \
      >>"$DIR/build.log" 2>&1 || fail "cmake build of the missing targets failed; see $DIR/build.log"
    [[ -x "$DIR/build/bin/kr-llama-greedy" ]] || build_helper
  fi
  if have_binaries; then
    [[ "$HELPER_SRC" -nt "$DIR/build/bin/kr-llama-greedy" ]] && build_helper
    echo "llama.cpp from llama-cpp-python $VERSION: already built in $DIR"
    exit 0
  fi
fi

command -v cmake >/dev/null || fail "cmake not found; install it (bash scripts/install_system_deps.sh)"
command -v c++ >/dev/null || fail "no C++ compiler (c++) found; install g++ or clang"
PY=$(command -v python3 || command -v python) || fail "python3 not found (needed for pip download)"

mkdir -p "$DIR"
rm -f "$STAMP"
: >"$DIR/build.log"
work=$(mktemp -d "$DIR/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PY" -m pip download "llama-cpp-python==$VERSION" --no-deps --no-binary llama-cpp-python -d "$work" \
  >>"$DIR/build.log" 2>&1 || fail "pip could not download the llama-cpp-python==$VERSION sdist (no network to PyPI?); see $DIR/build.log"
tar xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work" || fail "cannot unpack llama_cpp_python-$VERSION.tar.gz"
rm -rf "$DIR/src" "$DIR/build"
mv "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DIR/src"

echo "building llama.cpp (llama-cpp-python $VERSION) in $DIR with $JOBS jobs; log: $DIR/build.log"
cmake -S "$DIR/src" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  >>"$DIR/build.log" 2>&1 || fail "cmake configure failed; see $DIR/build.log"
nice -n 10 cmake --build "$DIR/build" --config Release -j "$JOBS" --target "${TARGETS[@]}" \
  >>"$DIR/build.log" 2>&1 || fail "cmake build failed; see $DIR/build.log"
build_helper
have_binaries || fail "build finished but binaries are missing from $DIR/build/bin; see $DIR/build.log"
echo "$VERSION" >"$STAMP"
echo "llama.cpp from llama-cpp-python $VERSION: built in $DIR"
