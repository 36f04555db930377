# Picks the SIMD level for at::vec::Vectorized. ATen's vec headers select their
# AVX2/AVX-512 implementations from CPU_CAPABILITY_* macros, so we probe what the
# compiler targets with -march=native and define the matching capability.
include(CheckCXXCompilerFlag)
include(CheckCXXSourceCompiles)

set(KR_SIMD_FLAGS "")
set(KR_CPU_CAPABILITY DEFAULT)
if(DEFINED ENV{KR_MINI_LLM_NATIVE} AND "$ENV{KR_MINI_LLM_NATIVE}" STREQUAL "0")
  set(KR_NATIVE OFF)
endif()

# KR_ISA (env KR_MINI_LLM_ISA): native (default: what the build machine has), avx512-bf16
# (Zen 4 / Cooper Lake: AVX-512 with VNNI and BF16 dot products), avx512 (Skylake-X) or avx2
# (x86: build for that level whatever the build machine has, so one machine can test the
# kernels every level's users get; benchmarks build each level into its own directory).
if(NOT DEFINED KR_ISA)
  set(KR_ISA "$ENV{KR_MINI_LLM_ISA}")
endif()
if(KR_ISA STREQUAL "avx2")
  set(KR_NATIVE OFF)
  set(KR_SIMD_FLAGS -mavx2 -mfma -mf16c -mbmi2)
  set(KR_CPU_CAPABILITY AVX2)
elseif(KR_ISA STREQUAL "avx512-bf16")
  set(KR_NATIVE OFF)
  set(KR_SIMD_FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx2 -mfma -mf16c -mbmi2)
  set(KR_CPU_CAPABILITY AVX512)
elseif(KR_ISA STREQUAL "avx512")
  set(KR_NATIVE OFF)
  set(KR_SIMD_FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mbmi2)
  set(KR_CPU_CAPABILITY AVX512)
elseif(NOT KR_ISA STREQUAL "" AND NOT KR_ISA STREQUAL "native")
  message(FATAL_ERROR "KR_MINI_LLM_ISA=${KR_ISA}: expected native, avx512-bf16, avx512 or avx2")
endif()

if(KR_NATIVE)
  check_cxx_compiler_flag("-march=native" KR_HAS_MARCH_NATIVE)
  check_cxx_compiler_flag("-mcpu=native" KR_HAS_MCPU_NATIVE)
  if(KR_HAS_MARCH_NATIVE)
    set(KR_SIMD_FLAGS -march=native)
  elseif(KR_HAS_MCPU_NATIVE)
    set(KR_SIMD_FLAGS -mcpu=native)
  endif()
  set(CMAKE_REQUIRED_FLAGS "${KR_SIMD_FLAGS}")
  check_cxx_source_compiles("
    #if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__))
    #error no avx512
    #endif
    int main() { return 0; }" KR_HAS_AVX512)
  check_cxx_source_compiles("
    #if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
    #error no avx2
    #endif
    int main() { return 0; }" KR_HAS_AVX2)
  unset(CMAKE_REQUIRED_FLAGS)
  if(KR_HAS_AVX512)
    set(KR_CPU_CAPABILITY AVX512)
  elseif(KR_HAS_AVX2)
    set(KR_CPU_CAPABILITY AVX2)
  endif()
  # On aarch64 ATen's NEON Vectorized is chosen by __aarch64__ itself: DEFAULT is right.
endif()
