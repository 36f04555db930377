// Dot-product micro-kernels for decode_linear: JB weight rows x NR rows of x, each weight vector
// loaded once and used for all NR rows, every product accumulated in registers. One struct per
// way of computing, each with the same face:
//
//   static constexpr int kMaxRows, kFewRows;       rows of x per pass; JB = 4 up to kFewRows rows
//   template <int NR, int JB> void operator()(n0, rows, out) const;
//                                                  out[jb][n] = x[n0 + n] . W[rows[jb]]
//
//   FloatDot<W>   weights widened to fp32 lanes, fp32 FMAs (every ISA, every shape)
//   Int8DotVnni   AVX512-VNNI: x quantized to int8 per block, vpdpbusd (u8 x s8 -> s32) on
//                 zmm, or ymm / xmm for blocks of 32 / 16
//   Int8DotAvx2   AVX2: the same quantized x, vpmaddubsw + vpmaddwd (s16 pairs -> s32)
//   Bf16Dot       AVX512-BF16: x rounded to bf16, vdpbf16ps (bf16 pairs -> fp32)
//   Int4PairDot   AVX2: packed int4 weights (see Int4x2) unpacked to bytes in registers, two
//                 blocks of 32 at a time, against x quantized and laid out to match (SteppedX):
//                 vpmaddubsw + vpmaddwd
//   Int4QuadDot   AVX512-VNNI: the same four blocks at a time on zmm, vpdpbusd
//   Int4FloatDot  int4 weights unpacked to int8 and widened to fp32 lanes (every other ISA)
//
// The int8 kernels sum whole blocks of B inputs in int32 and convert once per block, where
// both scales are known: y = sum_b sx[n, b] * sw[j, g(b)] * sum_{k in b} qx[n, k] * qw[j, k].
// That is llama.cpp's q8_0 x q8_0 scheme with our group sizes; it moves the int8 weights 4-8x
// fewer instructions per byte than widening them to fp32, which is what lets batch 8 stay
// memory-bound. The price is x's own rounding (at most half a step of max|x|/127 per block),
// bounded in the tests and measured as perplexity in benchmarks/quantization_quality.md.
#pragma once

#include "ops/common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <cstring>
#include <type_traits>
#include <utility>

namespace kr {

using VF = Vectorized<float>;
constexpr int64_t kVL = VF::size();
// Software prefetch (GCC/Clang builtin: x86 and Arm alike): each micro-kernel call gets `ahead`,
// the distance in weight elements from a row to its successor in the next block of rows, and
// prefetches there as it reads. One block ahead whatever the row length: a fixed distance along
// the row fell short for int8's 768-byte rows (the next block was fetched only when reached).
// Measured on model_small's decode: about 12 KB and at least two blocks ahead (int8: 4 blocks of
// 4 x 768 bytes; bf16: 2 blocks of 8 x 1.5 KB) made int8 1.35x, bf16 1.3x and fp32 1.08x faster
// than 1 KB along the row; one block ahead gave less for int8 and bf16, 24 KB less for int8.
constexpr int64_t kPrefetchAheadBytes = 12 << 10;

// Calls f(std::integral_constant<int, I>) for I = 0..N-1, unrolled at compile time: the
// accumulator arrays are then indexed by constants only and stay in registers.
template <int N, typename F, int... I>
inline void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void static_for(F&& f) {
  static_for_impl<N>(std::forward<F>(f), std::make_integer_sequence<int, N>{});
}

#if defined(__F16C__)
// One fp16 scale as fp32 (F16C: one instruction; c10's conversion is bit arithmetic).
inline float half_to_float(at::Half h) { return _cvtsh_ss(h.x); }
#endif

// Packed int4 weights: each row is K / 32 blocks of 16 bytes, and byte i of a block holds input
// i of the block in its low nibble and input i + 16 in its high nibble, as u = q + 8 in [0, 15]
// (q in [-8, 7]): llama.cpp's Q4_0 layout, so 16 bytes unpack into 32 inputs in order with one
// shift and two masks.
struct Int4x2 {
  uint8_t bits;
};

// The weights as the kernels see them: M rows of K inputs (K / 2 bytes for Int4x2), and for
// int8 / int4 `groups` scales per row: fp32 for int8, fp16 for int4 (Q4_0's 18 bytes per 32 weights,
// where fp32 scales made 20).
template <typename W>
struct Weights {
  static constexpr int64_t kInputsPerElement = std::is_same_v<W, Int4x2> ? 2 : 1;
  using Scale = std::conditional_t<std::is_same_v<W, Int4x2>, at::Half, float>;
  const W* data;
  const Scale* scales;  // nullptr unless int8 / int4: [M, groups]
  int64_t K, groups, group_size;
  int64_t row_elements() const { return K / kInputsPerElement; }
};

// ---- fp32 lanes: any weight type, any ISA ------------------------------------------------------
template <typename W>
struct WeightLoad;

template <>
struct WeightLoad<float> {
  static inline VF load(const float* p) { return VF::loadu(p); }
  static inline VF load(const float* p, int64_t n) { return VF::loadu(p, n); }
};

template <>
struct WeightLoad<at::BFloat16> {
  static inline VF load(const at::BFloat16* p) {
    VF out;
    at::vec::load_to_float(p, out);
    return out;
  }
  static inline VF load(const at::BFloat16* p, int64_t n) {
    __at_align__ at::BFloat16 buf[kVL] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
    return load(buf);
  }
};

template <>
struct WeightLoad<int8_t> {
  static inline VF load(const int8_t* p) { return at::vec::convert<float>(Vectorized<int8_t>::loadu(p, kVL)); }
  static inline VF load(const int8_t* p, int64_t n) {
    __at_align__ int8_t buf[Vectorized<int8_t>::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
    return load(buf);
  }
};

// Int8 weights are widened to fp32 and scaled per group before the FMA, so the group scale costs
// one multiply per weight vector whatever the row count.
template <typename W>
struct FloatDot {
  // JB x NR accumulators must stay in registers (32 zmm; 16 ymm / NEON q).
  static constexpr int kMaxRows = kVL >= 16 ? 8 : 4;
  static constexpr int kFewRows = kVL >= 16 ? 4 : 2;
  static constexpr int kOneRowJB = 8;
  const float* x;  // [N, K] fp32
  Weights<W> w;

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    constexpr bool kInt8 = std::is_same_v<W, int8_t>;
    const int64_t K = w.K;
    const float* xr = x + n0 * K;
    VF acc[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = VF(0.f); }); });
    const W* wr[JB];
    for (int jb = 0; jb < JB; ++jb) wr[jb] = w.data + rows[jb] * K;
    // One vector of every row: full (cnt = kVL, no masks) or the tail of a group.
    auto step = [&](int64_t k, auto full, int64_t cnt, const VF* s) {
      VF xv[NR];
      static_for<NR>([&](auto n) {
        if constexpr (decltype(full)::value) {
          xv[n] = VF::loadu(xr + n * K + k);
        } else {
          xv[n] = VF::loadu(xr + n * K + k, cnt);
        }
      });
      static_for<JB>([&](auto jb) {
        VF wv;
        if constexpr (decltype(full)::value) {
          __builtin_prefetch(wr[jb] + k + ahead);
          wv = WeightLoad<W>::load(wr[jb] + k);
        } else {
          wv = WeightLoad<W>::load(wr[jb] + k, cnt);
        }
        if constexpr (kInt8) wv = wv * s[jb];
        static_for<NR>([&](auto n) { acc[jb][n] = at::vec::fmadd(wv, xv[n], acc[jb][n]); });
      });
    };
    const int64_t G = w.group_size;
    for (int64_t g = 0; g < w.groups; ++g) {
      const int64_t k0 = g * G, k1 = k0 + G;
      VF s[JB];
      if constexpr (kInt8) {
        static_for<JB>([&](auto jb) { s[jb] = VF(w.scales[rows[jb] * w.groups + g]); });
      }
      int64_t k = k0;
      for (; k + kVL <= k1; k += kVL) step(k, std::true_type{}, kVL, s);
      if (k < k1) step(k, std::false_type{}, k1 - k, s);
    }
    static_for<JB>([&](auto jb) {
      static_for<NR>([&](auto n) { out[jb][n] = at::vec::vec_reduce_all<float>(std::plus<VF>(), acc[jb][n]); });
    });
  }
};

// ---- int8 x int8 -------------------------------------------------------------------------------
// x quantized per block of B inputs (B divides the weight group and is a multiple of the kernel's
// vector bytes, and of 16): q = round(x / s), s = max|x| / 127, so |q| <= 127.
struct QuantizedX {
  const int8_t* q;          // [N, K]
  const float* s;           // [N, K / B]
  int64_t K, B;
  const int32_t* corr = nullptr;  // [N, K / B]: 128 * sum(q) per block, for Int8DotVnni (see there)
};

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define KR_DECODE_INT8_VNNI 1
// The VNNI kernel's vector: 64 bytes (zmm), or 32 / 16 (ymm / xmm, AVX512-VL) for blocks of 32 / 16
// inputs (model_tiny's 688-wide MLP admits only 16).
struct Zmm {
  using I = __m512i;
  using F = __m512;
  static constexpr int64_t kBytes = 64;
  static I zero() { return _mm512_setzero_si512(); }
  static I load(const int8_t* p) { return _mm512_loadu_si512(p); }
  static I dot(I acc, I u, I s) { return _mm512_dpbusd_epi32(acc, u, s); }
  static I flip(I v) { return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))); }
  static I minus_lane0(I acc, int32_t c) { return _mm512_mask_sub_epi32(acc, 1, acc, _mm512_set1_epi32(c)); }
  static F fzero() { return _mm512_setzero_ps(); }
  static F scaled_add(I d, float s, F acc) { return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(s), acc); }
  static float sum(F v) { return _mm512_reduce_add_ps(v); }
};

struct Ymm {
  using I = __m256i;
  using F = __m256;
  static constexpr int64_t kBytes = 32;
  static I zero() { return _mm256_setzero_si256(); }
  static I load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I dot(I acc, I u, I s) { return _mm256_dpbusd_epi32(acc, u, s); }
  static I flip(I v) { return _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))); }
  static I minus_lane0(I acc, int32_t c) { return _mm256_mask_sub_epi32(acc, 1, acc, _mm256_set1_epi32(c)); }
  static F fzero() { return _mm256_setzero_ps(); }
  static F scaled_add(I d, float s, F acc) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(s), acc); }
  static float sum(F v) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
};

struct Xmm {
  using I = __m128i;
  using F = __m128;
  static constexpr int64_t kBytes = 16;
  static I zero() { return _mm_setzero_si128(); }
  static I load(const int8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
  static I dot(I acc, I u, I s) { return _mm_dpbusd_epi32(acc, u, s); }
  static I flip(I v) { return _mm_xor_si128(v, _mm_set1_epi8(static_cast<char>(0x80))); }
  static I minus_lane0(I acc, int32_t c) { return _mm_sub_epi32(acc, _mm_cvtsi32_si128(c)); }
  static F fzero() { return _mm_setzero_ps(); }
  static F scaled_add(I d, float s, F acc) { return _mm_fmadd_ps(_mm_cvtepi32_ps(d), _mm_set1_ps(s), acc); }
  static float sum(F t) {
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
};

// vpdpbusd multiplies unsigned by signed bytes: each weight vector is flipped to w + 128 (xor 0x80)
// as it is loaded and meets x's q as the signed side, and the 128 * sum(q) this adds to a block is
// a constant of x (QuantizedX::corr, once per call), taken off lane 0 of the block's int32 sum: the
// lanes still add up to the exact sum(q * w). (Offsetting x instead needs sum(w) per row and block,
// a second vpdpbusd per weight vector: that kernel was 1.05-1.2x slower on L2-resident int8 weights,
// one thread of a Zen 4.) Every lane stays exact in fp32: 4 * B / kBytes <= 8 products of at most
// 255 * 128 each, and 128 * |sum(q)| <= 128 * 128 * 128 in lane 0, together under 2^22.
template <typename V>
struct Int8DotVnni {
  static constexpr int64_t kBytes = V::kBytes;
  static constexpr int kMaxRows = 8;
  static constexpr int kFewRows = 4;
  static constexpr int kOneRowJB = 1;  // one weight stream (see decode_linear.cpp run_jb)
  QuantizedX x;
  Weights<int8_t> w;

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    using I = typename V::I;
    using F = typename V::F;
    const int64_t K = x.K, B = x.B, blocks = K / B;
    const int8_t* wr[JB];
    for (int jb = 0; jb < JB; ++jb) wr[jb] = w.data + rows[jb] * K;
    F accf[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { accf[jb][n] = V::fzero(); }); });
    for (int64_t b = 0; b < blocks; ++b) {
      I acc[JB][NR];
      static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = V::zero(); }); });
      const int64_t k0 = b * B;
      for (int64_t k = k0; k < k0 + B; k += kBytes) {
        I xv[NR];
        static_for<NR>([&](auto n) { xv[n] = V::load(x.q + (n0 + n) * K + k); });
        static_for<JB>([&](auto jb) {
          __builtin_prefetch(wr[jb] + k + ahead);
          const I wv = V::flip(V::load(wr[jb] + k));
          static_for<NR>([&](auto n) { acc[jb][n] = V::dot(acc[jb][n], wv, xv[n]); });
        });
      }
      const int64_t g = k0 / w.group_size;
      static_for<JB>([&](auto jb) {
        const float sw = w.scales[rows[jb] * w.groups + g];
        static_for<NR>([&](auto n) {
          const int64_t xb = (n0 + n) * blocks + b;
          accf[jb][n] = V::scaled_add(V::minus_lane0(acc[jb][n], x.corr[xb]), sw * x.s[xb], accf[jb][n]);
        });
      });
    }
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { out[jb][n] = V::sum(accf[jb][n]); }); });
  }
};
#endif

#if defined(__AVX2__)
#define KR_DECODE_INT8_AVX2 1
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// vpmaddubsw multiplies unsigned by signed bytes and adds pairs into saturating int16: |w| as the
// unsigned side (|-128| = 128 reads right as u8) and x with w's sign as the signed side keep
// every pair sum within 2 * 128 * 127 < 2^15, so nothing saturates.
struct Int8DotAvx2 {
  static constexpr int64_t kBytes = 32;
  static constexpr int kMaxRows = 4;
  static constexpr int kFewRows = 2;
  static constexpr int kOneRowJB = 1;  // one weight stream (see decode_linear.cpp run_jb)
  QuantizedX x;
  Weights<int8_t> w;

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    const int64_t K = x.K, B = x.B, blocks = K / B;
    const __m256i ones16 = _mm256_set1_epi16(1);
    const int8_t* wr[JB];
    for (int jb = 0; jb < JB; ++jb) wr[jb] = w.data + rows[jb] * K;
    __m256 accf[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { accf[jb][n] = _mm256_setzero_ps(); }); });
    for (int64_t b = 0; b < blocks; ++b) {
      __m256i acc[JB][NR];
      static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = _mm256_setzero_si256(); }); });
      const int64_t k0 = b * B;
      for (int64_t k = k0; k < k0 + B; k += kBytes) {
        __m256i xv[NR];
        static_for<NR>([&](auto n) {
          xv[n] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + (n0 + n) * K + k));
        });
        static_for<JB>([&](auto jb) {
          __builtin_prefetch(wr[jb] + k + ahead);
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[jb] + k));
          const __m256i wabs = _mm256_abs_epi8(wv);
          static_for<NR>([&](auto n) {
            const __m256i p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv[n], wv));
            acc[jb][n] = _mm256_add_epi32(acc[jb][n], _mm256_madd_epi16(p16, ones16));
          });
        });
      }
      const int64_t g = k0 / w.group_size;
      static_for<JB>([&](auto jb) {
        const float sw = w.scales[rows[jb] * w.groups + g];
        static_for<NR>([&](auto n) {
          const __m256 s = _mm256_set1_ps(sw * x.s[(n0 + n) * blocks + b]);
          accf[jb][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[jb][n]), s, accf[jb][n]);
        });
      });
    }
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { out[jb][n] = hsum256(accf[jb][n]); }); });
  }
};
#endif

// ---- bf16 x bf16 -------------------------------------------------------------------------------
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define KR_DECODE_BF16_DP 1
// x rounded to bf16 once per call; each vdpbf16ps multiplies 32 bf16 pairs exactly and adds
// them into 16 fp32 lanes, one instruction where widening costs four.
struct Bf16Dot {
  static constexpr int kMaxRows = 8;
  static constexpr int kFewRows = 4;
  static constexpr int kOneRowJB = 1;  // one weight stream (see decode_linear.cpp run_jb)
  const at::BFloat16* x;  // [N, K] bf16
  Weights<at::BFloat16> w;

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    const int64_t K = w.K;
    const at::BFloat16* wr[JB];
    for (int jb = 0; jb < JB; ++jb) wr[jb] = w.data + rows[jb] * K;
    __m512 acc[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = _mm512_setzero_ps(); }); });
    auto step = [&](int64_t k, __mmask32 m) {
      __m512bh xv[NR];
      static_for<NR>([&](auto n) { xv[n] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + (n0 + n) * K + k); });
      static_for<JB>([&](auto jb) {
        __builtin_prefetch(wr[jb] + k + ahead);
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, wr[jb] + k);
        static_for<NR>([&](auto n) { acc[jb][n] = _mm512_dpbf16_ps(acc[jb][n], xv[n], wv); });
      });
    };
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) step(k, ~__mmask32(0));
    if (k < K) step(k, (__mmask32(1) << (K - k)) - 1);
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { out[jb][n] = _mm512_reduce_add_ps(acc[jb][n]); }); });
  }
};
#endif

// ---- int4 ---------------------------------------------------------------------------------------
// 32 inputs of one Int4x2 row as u = q + 8 in 32 bytes, in input order (inputs k..k+15 are the
// low nibbles of the 16 bytes, k+16..k+31 the high ones).
template <typename Fn>
inline void unpack_int4_block(const Int4x2* p, Fn&& put) {
  const uint8_t* b = &p->bits;
  for (int i = 0; i < 16; ++i) {
    put(i, b[i] & 0x0F);
    put(i + 16, b[i] >> 4);
  }
}

#if defined(__AVX2__) && defined(__F16C__)  // F16C: the fp16 scales (every AVX2 CPU has it)
#define KR_DECODE_INT4_PAIRS 1
// x for the int4 kernels: quantized to int8 per block of 32 inputs, as QuantizedX with B = 32, and
// laid out per step of S blocks (S = 2 for Int4PairDot, 4 for Int4QuadDot) the way 16 * S bytes of
// packed weights unpack with one shift and two masks (low nibbles: inputs 0..15 of each block;
// high nibbles: inputs 16..31):
//   q     lo = [x_b 0..15 | x_b+1 0..15 | ...], hi = [x_b 16..31 | x_b+1 16..31 | ...]   (32 S bytes)
//   s     [s_b x4 | s_b+1 x4 | ...]                                                   (4 S floats)
//   corr  [8 sum q_b, 0, 0, 0 | 8 sum q_b+1, 0, 0, 0 | ...]                            (4 S int32)
// A last step with fewer than S blocks has zeros in the missing ones.
struct SteppedX {
  const int8_t* q;       // [N, steps * 32 S]
  const float* s;        // [N, steps * 4 S]
  const int32_t* corr;   // [N, steps * 4 S]
  const int32_t* group;  // [K / 32]: the weight group of each block (kAnyGroup, kGroupPerStep)
  int64_t K, steps;
};

// How a step of S blocks finds its weight scales.
enum Int4Groups { kGroupPerBlock, kGroupPerStep, kAnyGroup };  // G = 32; G % (32 S) == 0; else

// AVX2: int4 weights against x quantized to int8, two packed blocks (64 inputs, 32 bytes) per step.
// The unsigned nibbles u = q + 8 are vpmaddubsw's unsigned side as they are, x the signed side,
// and the 8 * sum(x) this adds is taken off per block: sum_k q_k x_k = sum_k u_k x_k - 8 sum_k x_k.
// The two products add in int16 before vpmaddwd (each pair sum is within 2 * 15 * 127, so both
// within 2^15), and each int32 lane holds one block, so one convert and one FMA with the per-lane
// scales [sw_b * s_b x4 | sw_b+1 * s_b+1 x4] finish two blocks: about 15 instructions per 64
// weights of a row where one block at a time took 26. AVX512-VNNI builds run Int4QuadDot instead.
template <Int4Groups kGroups>
struct Int4PairDot {
  static constexpr int64_t kBlocks = 2;  // per step (SteppedX)
  static constexpr int kMaxRows = 4;
  static constexpr int kFewRows = 2;
  static constexpr int kOneRowJB = 2;  // 2 streams; 1 reloads x's pair vectors for every row
  SteppedX x;
  Weights<Int4x2> w;

  // [sw_b x4 | sw_b+1 x4] for the pair p of one row's scales sr (half: the second block is absent).
  template <bool kHalf>
  inline __m256 pair_scales(const at::Half* sr, int64_t p) const {
    if constexpr (kHalf) {
      const int64_t g = kGroups == kGroupPerBlock ? 2 * p : x.group[2 * p];
      return _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_set1_ps(half_to_float(sr[g])), 0);
    }
    if constexpr (kGroups == kGroupPerBlock) {
      int32_t two_halves;
      std::memcpy(&two_halves, sr + 2 * p, sizeof(two_halves));
      const __m128 two = _mm_cvtph_ps(_mm_cvtsi32_si128(two_halves));
      return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    } else if constexpr (kGroups == kGroupPerStep) {
      return _mm256_set1_ps(half_to_float(sr[x.group[2 * p]]));
    } else {
      return _mm256_set_m128(_mm_set1_ps(half_to_float(sr[x.group[2 * p + 1]])),
                             _mm_set1_ps(half_to_float(sr[x.group[2 * p]])));
    }
  }

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    const int64_t blocks = x.K / 32, full = blocks / 2, row = w.row_elements();
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i ones16 = _mm256_set1_epi16(1);
    const uint8_t* wr[JB];
    const at::Half* sr[JB];
    for (int jb = 0; jb < JB; ++jb) {
      wr[jb] = &w.data[rows[jb] * row].bits;
      sr[jb] = w.scales + rows[jb] * w.groups;
    }
    __m256 accf[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { accf[jb][n] = _mm256_setzero_ps(); }); });
    auto step = [&](int64_t p, auto half) {
      constexpr bool kHalf = decltype(half)::value;
      static_for<JB>([&](auto jb) {
        const uint8_t* wp = wr[jb] + p * 32;
        __m256i v;
        if constexpr (kHalf) {
          v = _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128(reinterpret_cast<const __m128i*>(wp)), 0);
        } else {
          __builtin_prefetch(wp + ahead);
          v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
        }
        const __m256i lo = _mm256_and_si256(v, low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        const __m256 sw = pair_scales<kHalf>(sr[jb], p);
        static_for<NR>([&](auto n) {
          const int64_t at = (n0 + n) * x.steps + p;
          const int8_t* xq = x.q + at * 64;
          const __m256i xl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
          const __m256i xh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
          const __m256i dot =
              _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)), ones16);
          const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.corr + at * 8));
          const __m256i d = _mm256_sub_epi32(dot, corr);
          const __m256 s = _mm256_mul_ps(sw, _mm256_loadu_ps(x.s + at * 8));
          accf[jb][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, accf[jb][n]);
        });
      });
    };
    for (int64_t p = 0; p < full; ++p) step(p, std::false_type{});
    if (blocks % 2) step(full, std::true_type{});
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { out[jb][n] = hsum256(accf[jb][n]); }); });
  }
};
#endif

#if defined(KR_DECODE_INT8_VNNI)
#define KR_DECODE_INT4_QUADS 1
// AVX512-VNNI: Int4PairDot's scheme on zmm, four packed blocks (128 inputs, 64 bytes) per step:
// one load, a shift and two masks unpack them, two vpdpbusd sum the low and high nibbles against
// x, and each 128-bit lane of int32 holds one block, finished by one subtract, convert, multiply
// and FMA with [sw_b x4 | ... | sw_b+3 x4] * s. Half the instructions per weight of two blocks on
// ymm, with x's step pointers advanced instead of recomputed (the ymm loop spent a third of its
// instructions on addresses). A last step of 1-3 blocks loads its weights and scales masked.
template <Int4Groups kGroups>
struct Int4QuadDot {
  static constexpr int64_t kBlocks = 4;  // per step (SteppedX)
  static constexpr int kMaxRows = 4;
  static constexpr int kFewRows = 2;
  static constexpr int kOneRowJB = 1;  // one weight stream: 2 measured 4-11% slower on a Zen 4
  SteppedX x;
  Weights<Int4x2> w;

  // [sw_b x4 | sw_b+1 x4 | sw_b+2 x4 | sw_b+3 x4] for step p of one row's scales sr; r = the
  // blocks present in the step (4 but in the last).
  inline __m512 step_scales(const at::Half* sr, int64_t p, int r) const {
    __m128i four;  // fp16
    if constexpr (kGroups == kGroupPerStep) {
      return _mm512_set1_ps(half_to_float(sr[x.group[4 * p]]));
    } else if constexpr (kGroups == kGroupPerBlock) {
      four = r == 4 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sr + 4 * p))
                    : _mm_maskz_loadu_epi16(static_cast<__mmask8>((1 << r) - 1), sr + 4 * p);
    } else {
      alignas(16) at::Half t[8] = {};
      for (int i = 0; i < r; ++i) t[i] = sr[x.group[4 * p + i]];
      four = _mm_load_si128(reinterpret_cast<const __m128i*>(t));
    }
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(four)));
  }

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    const int64_t blocks = x.K / 32, full = blocks / 4, row = w.row_elements();
    const int tail = static_cast<int>(blocks % 4);
    const __m512i low = _mm512_set1_epi8(0x0F);
    const uint8_t* wr[JB];
    const at::Half* sr[JB];
    for (int jb = 0; jb < JB; ++jb) {
      wr[jb] = &w.data[rows[jb] * row].bits;
      sr[jb] = w.scales + rows[jb] * w.groups;
    }
    const int8_t* xq[NR];
    const float* xs[NR];
    const int32_t* xc[NR];
    for (int n = 0; n < NR; ++n) {
      xq[n] = x.q + (n0 + n) * x.steps * 128;
      xs[n] = x.s + (n0 + n) * x.steps * 16;
      xc[n] = x.corr + (n0 + n) * x.steps * 16;
    }
    __m512 acc[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = _mm512_setzero_ps(); }); });
    auto step = [&](int64_t p, auto is_tail, int r) {
      constexpr bool kTail = decltype(is_tail)::value;
      static_for<JB>([&](auto jb) {
        const uint8_t* wp = wr[jb] + p * 64;
        __m512i v;
        if constexpr (kTail) {
          v = _mm512_maskz_loadu_epi8((__mmask64{1} << (16 * r)) - 1, wp);
        } else {
          __builtin_prefetch(wp + ahead);
          v = _mm512_loadu_si512(wp);
        }
        const __m512i lo = _mm512_and_si512(v, low);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        const __m512 sw = step_scales(sr[jb], p, kTail ? r : 4);
        static_for<NR>([&](auto n) {
          const __m512i xl = _mm512_loadu_si512(xq[n] + p * 128);
          const __m512i xh = _mm512_loadu_si512(xq[n] + p * 128 + 64);
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
          const __m512i d = _mm512_sub_epi32(dot, _mm512_loadu_si512(xc[n] + p * 16));
          const __m512 s = _mm512_mul_ps(sw, _mm512_loadu_ps(xs[n] + p * 16));
          acc[jb][n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[jb][n]);
        });
      });
    };
    for (int64_t p = 0; p < full; ++p) step(p, std::false_type{}, 4);
    if (tail) step(full, std::true_type{}, tail);
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { out[jb][n] = _mm512_reduce_add_ps(acc[jb][n]); }); });
  }
};
#endif

// Int4 weights widened to fp32 lanes (at::vec: NEON, or x86 without AVX2): each packed block of
// every row is unpacked to q in int8 on the stack, then read as FloatDot reads int8 weights.
struct Int4FloatDot {
  static constexpr int kMaxRows = kVL >= 16 ? 8 : 4;
  static constexpr int kFewRows = kVL >= 16 ? 4 : 2;
  static constexpr int kOneRowJB = 4;
  const float* x;  // [N, K] fp32
  Weights<Int4x2> w;

  template <int NR, int JB>
  inline void operator()(int64_t n0, const int64_t* rows, int64_t ahead, float (&out)[JB][NR]) const {
    const int64_t K = w.K, row = w.row_elements();
    const float* xr = x + n0 * K;
    VF acc[JB][NR];
    static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = VF(0.f); }); });
    const Int4x2* wr[JB];
    for (int jb = 0; jb < JB; ++jb) wr[jb] = w.data + rows[jb] * row;
    const int64_t G = w.group_size;
    static_assert(32 % kVL == 0, "a packed block must be a whole number of float vectors");
    for (int64_t k = 0; k < K; k += 32) {
      __at_align__ int8_t q[JB][32];
      VF s[JB];
      static_for<JB>([&](auto jb) {
        __builtin_prefetch(wr[jb] + k / 2 + ahead);
        unpack_int4_block(wr[jb] + k / 2, [&](int i, int u) { q[jb][i] = static_cast<int8_t>(u - 8); });
        s[jb] = VF(static_cast<float>(w.scales[rows[jb] * w.groups + k / G]));
      });
      for (int64_t i = 0; i < 32; i += kVL) {
        VF xv[NR];
        static_for<NR>([&](auto n) { xv[n] = VF::loadu(xr + n * K + k + i); });
        static_for<JB>([&](auto jb) {
          const VF wv = WeightLoad<int8_t>::load(q[jb] + i) * s[jb];
          static_for<NR>([&](auto n) { acc[jb][n] = at::vec::fmadd(wv, xv[n], acc[jb][n]); });
        });
      }
    }
    static_for<JB>([&](auto jb) {
      static_for<NR>([&](auto n) { out[jb][n] = at::vec::vec_reduce_all<float>(std::plus<VF>(), acc[jb][n]); });
    });
  }
};

}  // namespace kr
