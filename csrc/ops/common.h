// Shared helpers for the CPU kernels: SIMD load/store in the accumulation type,
// and argument checks whose messages name the argument and what was expected.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/safe_numerics.h>
#include <torch/library.h>

#include <sstream>
#include <string>

// bf16 stores by the CPU's own conversion where the build has it (AVX512-BF16, 16 fp32 lanes).
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#define KR_BF16_CVT 1
#endif

namespace kr {

using at::vec::Vectorized;

// float for float/bfloat16/half, double for double.
template <typename T>
using acc_t = at::opmath_type<T>;

// Loads and stores Vectorized<acc_t<T>> lanes from/to memory of T.
template <typename T>
struct VecIO {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  static constexpr int64_t kSize = V::size();

  static inline V load(const T* p) {
    if constexpr (std::is_same_v<T, A>) {
      return V::loadu(p);
    } else {
      V out;
      at::vec::load_to_float<T>(p, out);
      return out;
    }
  }
  static inline V load(const T* p, int64_t n) {
    if constexpr (std::is_same_v<T, A>) {
      return V::loadu(p, n);
    } else {
      __at_align__ T buf[kSize] = {};
      for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
      return load(buf);
    }
  }
  static inline void store(T* p, const V& v) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p);
#ifdef KR_BF16_CVT
    } else if constexpr (std::is_same_v<T, at::BFloat16>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_of(v));
#endif
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, kSize);
    }
  }
  static inline void store(T* p, const V& v, int64_t n) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p, n);
#ifdef KR_BF16_CVT
    } else if constexpr (std::is_same_v<T, at::BFloat16>) {
      TORCH_INTERNAL_ASSERT_DEBUG_ONLY(n >= 0 && n <= kSize);
      _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), bf16_of(v));
#endif
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, n);
    }
  }

 private:
#ifdef KR_BF16_CVT
  // One instruction where ATen's vectorised conversion takes about eight (and converts a second,
  // unused half): round to nearest even as ATen's, except that a denormal float (below 2^-126)
  // becomes a signed zero and a NaN stays a quiet NaN with its sign (ATen writes 0xFFFF).
  static inline __m256i bf16_of(const V& v) {
    return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(static_cast<__m512>(v)));
  }
#endif
};

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// The floating dtypes every kernel accepts.
inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble,
                   op, ": ", name, " must be float32, bfloat16, float16 or float64, got ", st);
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b,
                             const char* bn, const char* op) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", an, " (", a.scalar_type(),
                   ") and ", bn, " (", b.scalar_type(), ") must have the same dtype");
}

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU for this kernel, got ",
                    t.device());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name,
                      const char* expected) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", expected, ", got shape ",
                    shape_str(t));
}

// Bound checks on values that come from users (cache lengths, indexes, int arguments) are
// written so that they cannot overflow: `start + count <= cap` wraps for a start near INT64_MAX
// and lets the write through, so these compare against `cap - count` instead.

// Whether rows [start, start + count) lie inside [0, cap), for sizes count, cap >= 0.
inline bool rows_fit(int64_t start, int64_t count, int64_t cap) {
  return count <= cap && start >= 0 && start <= cap - count;
}

// a * b + c for sizes and user ints; false (out untouched) where it would not fit in int64.
inline bool mul_add_fits(int64_t a, int64_t b, int64_t c, int64_t* out) {
  int64_t ab = 0, r = 0;
  if (c10::mul_overflows(a, b, &ab) || c10::add_overflows(ab, c, &r)) return false;
  *out = r;
  return true;
}

// Splits [0, n) into at most max_blocks blocks of whole rows. The split depends only on
// n, never on the thread count, so reductions over blocks give the same bits on 1 or N threads.
inline int64_t fixed_block_count(int64_t n, int64_t max_blocks = 64) {
  return std::max<int64_t>(1, std::min<int64_t>(n, max_blocks));
}

}  // namespace kr
