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
