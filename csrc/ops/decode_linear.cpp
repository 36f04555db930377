// Decode-time linears: y = x W^T for a few rows of x (batch x new tokens, about 1-16), where
// reading W once is the whole cost. Weights are fp32, bf16, int8 with symmetric fp32 scales per
// group of G consecutive inputs (G = K is one scale per output channel), or int4 (a uint8 weight
// [M, K / 2], two inputs per byte in decode_dot.h's Int4x2 layout) with fp16 scales per group of
// G, a multiple of 32 (Q4_0's layout and scale type); x is fp32 or bf16 and every sum is
// accumulated in fp32 (int8 blocks in int32 first).
//
// Layout of the work: output rows are split into blocks of JB rows, blocks are spread over the
// threads (at::parallel_for), and each block streams its JB weight rows once while it keeps
// JB x NR accumulators in registers for up to NR rows of x (more rows of x: the block is re-run
// from L1 for the next NR rows). The dot products themselves are decode_dot.h's micro-kernels:
// int8 and int4 weights meet x quantized to int8 where the CPU has int8 dot products (AVX512-VNNI,
// AVX2),
// bf16 weights meet x rounded to bf16 where it has bf16 dot products (AVX512-BF16); elsewhere,
// and for shapes those kernels do not tile, weights are widened to fp32.
//
// decode_linear_swiglu computes silu(x Wg^T) * (x Wu^T) for W = [Wg; Wu] stacked along the
// outputs: each block reads matching gate and up rows, so the [N, 2I] projection never exists.
// These are inference ops: they have no backward (the Python face says so when asked for one).
#include "ops/common.h"
#include "ops/decode_dot.h"
#include "ops/row_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace kr {
namespace {

// The output rows of one block of work, and where each of its JB dot products goes.
enum class Epilogue { kPlain, kSwiGLU };

// Per-call scratch (x is a few rows, a SwiGLU chunk): reused across calls so a decode step allocates
// nothing.
template <typename E>
E* scratch(std::vector<E>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// kPlain: y (+ residual) at outputs j0..; kSwiGLU: the fp32 gate and up dot products into gate/up
// [NR rows, ldg apart] at column j0 - c0 (run_range applies SiLU to a chunk at a time, vectorised).
struct SwiGLUOut {
  float *gate, *up;
  int64_t ldg, c0;
};

template <typename Dot, typename T, int NR, int JB, Epilogue E>
inline void run_block(const Dot& dot, int64_t n0, int64_t j0, int64_t half, T* y, int64_t ldy, const T* residual,
                      const SwiGLUOut& so) {
  // kPlain: JB consecutive rows j0..; kSwiGLU: JB/2 gate rows j0.. and the up rows half + j0..
  int64_t rows[JB];
  constexpr int kOut = E == Epilogue::kPlain ? JB : JB / 2;
  for (int i = 0; i < kOut; ++i) {
    rows[i] = j0 + i;
    if constexpr (E == Epilogue::kSwiGLU) rows[kOut + i] = half + j0 + i;
  }
  float out[JB][NR];
  // Each weight row prefetches its successor a few blocks on (kOut rows per block) at the same
  // column: about kPrefetchAheadBytes ahead in every stream, at least two blocks.
  const int64_t block_elems = kOut * dot.w.row_elements();
  const int64_t blocks_ahead =
      std::max<int64_t>(2, kPrefetchAheadBytes / std::max<int64_t>(1, block_elems * int64_t{sizeof(*dot.w.data)}));
  dot.template operator()<NR, JB>(n0, rows, blocks_ahead * block_elems, out);
  for (int n = 0; n < NR; ++n) {
    for (int i = 0; i < kOut; ++i) {
      if constexpr (E == Epilogue::kPlain) {
        float v = out[i][n];
        if (residual != nullptr) v += static_cast<float>(residual[n * ldy + j0 + i]);
        y[n * ldy + j0 + i] = static_cast<T>(v);
      } else {
        so.gate[(n0 + n) * so.ldg + j0 - so.c0 + i] = out[i][n];
        so.up[(n0 + n) * so.ldg + j0 - so.c0 + i] = out[kOut + i][n];
      }
    }
  }
}

// All N rows of x against output rows [j0, j0 + kOut * count): blocks of JB, rows in passes of NR.
template <typename Dot, typename T, int JB, Epilogue E>
void run_range(const Dot& dot, int64_t N, int64_t j0, int64_t j1, int64_t half, T* y, int64_t ldy,
               const T* residual) {
  constexpr int kOut = E == Epilogue::kPlain ? JB : JB / 2;
  constexpr int kMaxRows = Dot::kMaxRows;
  // SwiGLU: the gate/up dot products of kChunk outputs (a multiple of kOut) at a time in fp32, then
  // silu(gate) * up over the chunk with swiglu's own vector code (a scalar exp per output cost
  // about 3% of an int4 decode step).
  constexpr int64_t kChunk = E == Epilogue::kSwiGLU ? 64 : std::numeric_limits<int64_t>::max() / 2;
  static_assert(E != Epilogue::kSwiGLU || kChunk % kOut == 0, "a SwiGLU chunk holds whole blocks of outputs");
  SwiGLUOut so{nullptr, nullptr, kChunk, 0};
  if constexpr (E == Epilogue::kSwiGLU) {
    thread_local std::vector<float> gu_buf;
    float* buf = scratch(gu_buf, 2 * N * kChunk);
    so.gate = buf;
    so.up = buf + N * kChunk;
  }
  for (int64_t c0 = j0; c0 < j1; c0 += kChunk) {
    const int64_t c1 = std::min(j1, c0 + kChunk);
    so.c0 = c0;
    for (int64_t j = c0; j < c1; j += kOut) {
      for (int64_t n0 = 0; n0 < N; n0 += kMaxRows) {
        T* yb = y + n0 * ldy;
        const T* rb = residual ? residual + n0 * ldy : nullptr;
        switch (std::min<int64_t>(kMaxRows, N - n0)) {
#define KR_ROWS_CASE(R)                                                                       \
  case R:                                                                                     \
    if constexpr (R <= kMaxRows) run_block<Dot, T, R, JB, E>(dot, n0, j, half, yb, ldy, rb, so); \
    break;
          KR_ROWS_CASE(1) KR_ROWS_CASE(2) KR_ROWS_CASE(3) KR_ROWS_CASE(4)
          KR_ROWS_CASE(5) KR_ROWS_CASE(6) KR_ROWS_CASE(7) KR_ROWS_CASE(8)
#undef KR_ROWS_CASE
          default:
            break;
        }
      }
    }
    if constexpr (E == Epilogue::kSwiGLU) {
      for (int64_t n = 0; n < N; ++n) swiglu_row<float, T>(so.gate + n * kChunk, so.up + n * kChunk, y + n * ldy + c0, c1 - c0);
    }
  }
}

// Output rows per block: 4 weight streams keep the loads busy (Dot::kOneRowJB for one row of x:
// 8 fp32/bf16 streams measured 6% faster at batch 1 on an Intel Xeon); with many rows of x the JB x NR
// accumulators would not fit in the registers, so JB = 2 there. SwiGLU blocks hold gate/up pairs,
// so they take at least 2. The int8, int4 and bf16 dot-product kernels take fewer rows at batch 1
// (1, 2 and 1): their rows are short (768 bytes for int8 at K = 768), and a block of 4 read side by
// side is 4 streams of 12 lines that the hardware prefetcher of an AMD Zen 3 barely follows (int8
// 10.5 GB/s on one core at K = 768, 19.3 at K = 12,288); one row at a time reads the matrix as one
// stream. On an AMD Zen 4 (AVX512-VNNI/BF16, 2 threads) one stream against 4 (int8) or 8 (bf16)
// streamed a 75 MB int8 matrix at 26.5-28.2 GB/s against 14.9, a 151 MB bf16 one at 24 against 19;
// one stream was never measured on the Xeon.
template <typename Dot, typename T, Epilogue E, int JB>
void run_jb(const Dot& dot, int64_t N, int64_t row_bytes, int64_t outputs, T* y, const T* residual) {
  constexpr int kOut = E == Epilogue::kPlain ? JB : JB / 2;
  const int64_t half = outputs;
  const int64_t full_blocks = outputs / kOut;
  // Enough weight bytes per task to pay for the fork, small enough that every thread streams.
  const int64_t bytes_per_block = std::max<int64_t>(1, row_bytes * JB);
  const int64_t grain = std::max<int64_t>(1, (int64_t{16} << 10) / bytes_per_block);
  at::parallel_for(0, full_blocks, grain, [&](int64_t b0, int64_t b1) {
    run_range<Dot, T, JB, E>(dot, N, b0 * kOut, b1 * kOut, half, y, outputs, residual);
  });
  // The last outputs % kOut rows, one (or one gate/up pair) at a time.
  constexpr int JB1 = E == Epilogue::kPlain ? 1 : 2;
  run_range<Dot, T, JB1, E>(dot, N, full_blocks * kOut, outputs, half, y, outputs, residual);
}

template <typename Dot, typename T, Epilogue E>
void run(const Dot& dot, int64_t N, int64_t row_bytes, int64_t outputs, T* y, const T* residual) {
  if (N == 1) {
    constexpr int JB = E == Epilogue::kSwiGLU ? std::max(2, Dot::kOneRowJB) : Dot::kOneRowJB;
    run_jb<Dot, T, E, JB>(dot, N, row_bytes, outputs, y, residual);
  } else if (N <= Dot::kFewRows) {
    run_jb<Dot, T, E, 4>(dot, N, row_bytes, outputs, y, residual);
  } else {
    run_jb<Dot, T, E, 2>(dot, N, row_bytes, outputs, y, residual);
  }
}

// ---- x in the micro-kernels' formats -----------------------------------------------------------

// The activation block of the int8 kernels: divides the weight group G (so each block has one
// weight scale) and is at most 128 inputs (finer blocks keep x's rounding small; coarser ones
// convert int32 sums less often). 0 where no such block is a whole number of kernel vectors.
int64_t int8_block(int64_t G, int64_t vector_bytes) {
  const int64_t B = std::gcd(G, int64_t{128});
  return B % vector_bytes == 0 ? B : 0;
}

#if defined(KR_DECODE_INT8_VNNI) || defined(KR_DECODE_INT8_AVX2)
// The smallest block the int8 kernel of this build tiles: 16 bytes with VNNI (xmm), 32 with AVX2.
#if defined(KR_DECODE_INT8_VNNI)
constexpr int64_t kInt8MinBlock = 16;
#else
constexpr int64_t kInt8MinBlock = 32;
#endif

// q = round(x / s), s = max|x| / 127 per block of B (a multiple of 16).
// 128-bit packs keep the bytes in order without lane fixes.
// `sums` (when not null) gets sum(q) per block, for the kernels that correct an offset by it.
void quantize_x(const float* x, int64_t N, int64_t K, int64_t B, int8_t* q, float* s,
                int32_t* sums = nullptr) {
  const int64_t blocks = K / B;
  const __m128 sign = _mm_set1_ps(-0.f);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + n * K + b * B;
      int8_t* qb = q + n * K + b * B;
      // maxps drops a NaN operand depending on its position, so NaNs are tracked beside the max:
      // a NaN in the block makes its scale NaN, and so every output it touches.
      __m128 m = _mm_setzero_ps(), nan = _mm_setzero_ps();
      for (int64_t k = 0; k < B; k += 4) {
        const __m128 v = _mm_loadu_ps(xb + k);
        m = _mm_max_ps(m, _mm_andnot_ps(sign, v));
        nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
      }
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      const float a = _mm_movemask_ps(nan) ? std::numeric_limits<float>::quiet_NaN() : _mm_cvtss_f32(m);
      s[n * blocks + b] = a / 127.f;
      const __m128 inv = _mm_set1_ps(a > 0.f ? 127.f / a : 0.f);
      __m128i total = _mm_setzero_si128();
      for (int64_t k = 0; k < B; k += 16) {
        __m128i i[4];
        for (int t = 0; t < 4; ++t) i[t] = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(xb + k + 4 * t), inv));
        const __m128i v = _mm_packs_epi16(_mm_packs_epi32(i[0], i[1]), _mm_packs_epi32(i[2], i[3]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + k), v);
        // the stored bytes, summed in int16 pairs (|q| <= 128: pair sums fit) then int32
        if (sums != nullptr) {
          total = _mm_add_epi32(total, _mm_madd_epi16(_mm_maddubs_epi16(_mm_set1_epi8(1), v), _mm_set1_epi16(1)));
        }
      }
      if (sums != nullptr) {
        total = _mm_add_epi32(total, _mm_shuffle_epi32(total, _MM_SHUFFLE(1, 0, 3, 2)));
        total = _mm_add_epi32(total, _mm_shuffle_epi32(total, _MM_SHUFFLE(2, 3, 0, 1)));
        sums[n * blocks + b] = _mm_cvtsi128_si32(total);
      }
    }
  }
}
#endif

// Inputs per packed int4 block (Int4x2): in_features and the group size are multiples of it.
constexpr int64_t kInt4Block = 32;

#if defined(KR_DECODE_INT4_PAIRS)
// x quantized per block of 32 (quantize_x) and laid out in steps of S blocks for the int4 kernel
// (see SteppedX: S = 4 where AVX512-VNNI is, else 2), then that kernel for the group size G: the
// scale lookup is chosen once per call.
#if defined(KR_DECODE_INT4_QUADS)
template <Int4Groups kGroups>
using Int4Dot = Int4QuadDot<kGroups>;
#else
template <Int4Groups kGroups>
using Int4Dot = Int4PairDot<kGroups>;
#endif

template <typename Launch>
void launch_int4(const float* xp, int64_t N, int64_t K, int64_t G, const Weights<Int4x2>& w, const Launch& launch) {
  constexpr int64_t S = Int4Dot<kAnyGroup>::kBlocks;
  const int64_t blocks = K / kInt4Block, steps = (blocks + S - 1) / S;
  thread_local std::vector<int8_t> q_buf, pq_buf;
  thread_local std::vector<float> s_buf, ps_buf;
  thread_local std::vector<int32_t> sum_buf, pc_buf, group_buf;
  int8_t* q = scratch(q_buf, N * K);
  float* s = scratch(s_buf, N * blocks);
  int32_t* sums = scratch(sum_buf, N * blocks);
  quantize_x(xp, N, K, kInt4Block, q, s, sums);
  int8_t* pq = scratch(pq_buf, N * steps * 32 * S);
  float* ps = scratch(ps_buf, N * steps * 4 * S);
  int32_t* pc = scratch(pc_buf, N * steps * 4 * S);
  int32_t* group = scratch(group_buf, blocks);
  std::fill(pq, pq + N * steps * 32 * S, int8_t{0});  // a short last step's missing blocks stay 0
  std::fill(ps, ps + N * steps * 4 * S, 0.f);
  std::fill(pc, pc + N * steps * 4 * S, 0);
  for (int64_t b = 0; b < blocks; ++b) group[b] = static_cast<int32_t>(b * kInt4Block / G);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t p = n * steps + b / S, slot = b % S;
      const int8_t* src = q + n * K + b * kInt4Block;
      std::memcpy(pq + p * 32 * S + slot * 16, src, 16);
      std::memcpy(pq + p * 32 * S + 16 * S + slot * 16, src + 16, 16);
      std::fill(ps + p * 4 * S + slot * 4, ps + p * 4 * S + slot * 4 + 4, s[n * blocks + b]);
      pc[p * 4 * S + slot * 4] = 8 * sums[n * blocks + b];
    }
  }
  const SteppedX sx{pq, ps, pc, group, K, steps};
  if (G == kInt4Block) {
    launch(Int4Dot<kGroupPerBlock>{sx, w});
  } else if (G % (S * kInt4Block) == 0) {
    launch(Int4Dot<kGroupPerStep>{sx, w});
  } else {
    launch(Int4Dot<kAnyGroup>{sx, w});
  }
}
#endif

// A weight's storage type and rank (name: its role in messages).
void check_weight_kind(const at::Tensor& weight, const char* op, const char* name) {
  check_cpu(weight, op, name);
  const auto wt = weight.scalar_type();
  TORCH_CHECK_TYPE(wt == at::kFloat || wt == at::kBFloat16 || wt == at::kChar || wt == at::kByte, op,
                   ": ", name, " must be float32, bfloat16, int8, or uint8 (int4 pairs), got ", wt);
  check_dim(weight, 2, op, name,
            wt == at::kByte ? "[out_features, in_features / 2]" : "[out_features, in_features]");
}

// int8 / int4 weights' scales for in_features K (already matched to the weight); none for the others.
void check_scales(const at::Tensor& weight, const std::optional<at::Tensor>& scales, int64_t K, const char* op,
                  const char* wname, const char* sname) {
  const auto wt = weight.scalar_type();
  const bool int4 = wt == at::kByte;
  if (int4) {
    TORCH_CHECK_VALUE(K % kInt4Block == 0, op, ": int4 weights need in_features a multiple of ", kInt4Block,
                      " (they are packed in blocks of 32 inputs), got ", K);
  }
  if (wt == at::kChar || int4) {
    const char* kind = int4 ? "int4" : "int8";
    // int4 scales are fp16 (Q4_0's), int8 ones fp32
    const auto st = int4 ? at::kHalf : at::kFloat;
    const char* stype = int4 ? "float16" : "float32";
    TORCH_CHECK_VALUE(scales.has_value(), op, ": ", kind, " ", wname, " needs ", sname,
                      " [out_features, groups] (", stype, ")");
    const at::Tensor& s = *scales;
    check_cpu(s, op, sname);
    TORCH_CHECK_TYPE(s.scalar_type() == st, op, ": ", sname, " of ", kind, " weights must be ", stype, ", got ",
                     s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == weight.size(0) && s.size(1) >= 1 && K % s.size(1) == 0,
                      op, ": ", sname, " must be [out_features, groups] = [", weight.size(0),
                      ", G] with G dividing in_features ", K, ", got ", shape_str(s));
    if (int4) {
      TORCH_CHECK_VALUE((K / s.size(1)) % kInt4Block == 0, op, ": int4 groups must be a multiple of ",
                        kInt4Block, " inputs, got ", s.size(1), " groups of ", K / s.size(1), " (", sname, " ",
                        shape_str(s), ")");
    }
  } else {
    TORCH_CHECK_VALUE(!scales.has_value(), op, ": ", sname, " are only for int8 and int4 weights, got ", wt, " ",
                      wname);
  }
}

// in_features K: weight.size(1), or twice that for int4 (uint8) weights.
int64_t check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales,
                   const char* op) {
  check_cpu(x, op, "x");
  check_cpu(weight, op, "weight");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
                   ": x must be float32 or bfloat16, got ", x.scalar_type());
  check_weight_kind(weight, op, "weight");
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must be [..., in_features], got a 0-d tensor");
  const int64_t K = x.size(-1);
  if (weight.scalar_type() == at::kByte) {
    // K / 2 rather than 2 * weight.size(1): no product that could overflow
    TORCH_CHECK_VALUE(K % 2 == 0 && K / 2 == weight.size(1), op, ": x [..., in_features] must end in ",
                      "in_features = 2 * weight.size(1) = 2 * ", weight.size(1), " for int4 weights, got x ",
                      shape_str(x));
  } else {
    TORCH_CHECK_VALUE(K == weight.size(1), op, ": x [..., in_features] must end in ",
                      "in_features = weight.size(1) = ", weight.size(1), ", got x ", shape_str(x));
  }
  check_scales(weight, scales, K, op, "weight", "scales");
  return K;
}

at::Tensor linear_impl(const at::Tensor& x_, const at::Tensor& weight_, const std::optional<at::Tensor>& scales_,
                       const std::optional<at::Tensor>& residual_, bool swiglu, const char* op) {
  const int64_t K = check_args(x_, weight_, scales_, op);
  const int64_t M = weight_.size(0);
  if (swiglu) {
    TORCH_CHECK_VALUE(M % 2 == 0, op, ": weight must stack gate and up rows [2 * intermediate, in_features], got ",
                      shape_str(weight_));
  }
  const int64_t outputs = swiglu ? M / 2 : M;
  std::vector<int64_t> out_shape(x_.sizes().begin(), x_.sizes().end());
  out_shape.back() = outputs;
  at::Tensor y = at::empty(out_shape, x_.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor residual;
  if (residual_.has_value()) {
    residual = *residual_;
    check_cpu(residual, op, "residual");
    TORCH_CHECK_VALUE(residual.sizes() == y.sizes(), op, ": residual must have the output's shape ", shape_str(y),
                      ", got ", shape_str(residual));
    check_same_dtype(residual, "residual", x_, "x", op);
    residual = residual.contiguous();
  }
  const int64_t N = x_.numel() / std::max<int64_t>(K, 1);
  if (y.numel() == 0) return y;
  if (K == 0) return residual.defined() ? y.copy_(residual) : y.zero_();
  // The rows of x in fp32: read once per block from L1/L2, so a bf16 x is widened up front.
  const at::Tensor x = x_.to(at::kFloat).contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor scales = scales_.has_value() ? scales_->contiguous() : at::Tensor();
  const float* xp = x.const_data_ptr<float>();
  const int64_t groups = scales.defined() ? scales.size(1) : 1;
  auto with_dot = [&](const auto& dot, auto ttag) {
    using Dot = std::decay_t<decltype(dot)>;
    using T = decltype(ttag);
    const int64_t row_bytes = weight.size(1) * static_cast<int64_t>(weight.element_size());
    T* yp = y.mutable_data_ptr<T>();
    const T* rp = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
    if (swiglu) {
      run<Dot, T, Epilogue::kSwiGLU>(dot, N, row_bytes, outputs, yp, nullptr);
    } else {
      run<Dot, T, Epilogue::kPlain>(dot, N, row_bytes, outputs, yp, rp);
    }
  };
  auto launch = [&](const auto& dot) {
    if (y.scalar_type() == at::kFloat) {
      with_dot(dot, float{});
    } else {
      with_dot(dot, at::BFloat16{});
    }
  };
  thread_local std::vector<int8_t> xq_buf;
  thread_local std::vector<float> xs_buf;
  switch (weight.scalar_type()) {
    case at::kFloat:
      launch(FloatDot<float>{xp, {weight.const_data_ptr<float>(), nullptr, K, 1, K}});
      break;
    case at::kBFloat16: {
      const Weights<at::BFloat16> w{weight.const_data_ptr<at::BFloat16>(), nullptr, K, 1, K};
#ifdef KR_DECODE_BF16_DP
      thread_local std::vector<at::BFloat16> xb_buf;
      at::BFloat16* xb = scratch(xb_buf, N * K);
      int64_t i = 0;
      for (; i + 16 <= N * K; i += 16) {  // round to nearest even, as at::BFloat16 does
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(xb + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(xp + i)));
      }
      for (; i < N * K; ++i) xb[i] = static_cast<at::BFloat16>(xp[i]);
      launch(Bf16Dot{xb, w});
#else
      launch(FloatDot<at::BFloat16>{xp, w});
#endif
      break;
    }
    case at::kByte: {
      const Weights<Int4x2> w{reinterpret_cast<const Int4x2*>(weight.const_data_ptr<uint8_t>()),
                              scales.const_data_ptr<at::Half>(), K, groups, K / groups};
#if defined(KR_DECODE_INT4_PAIRS)
      launch_int4(xp, N, K, K / groups, w, launch);
#else
      launch(Int4FloatDot{xp, w});
#endif
      break;
    }
    default: {
      const Weights<int8_t> w{weight.const_data_ptr<int8_t>(), scales.const_data_ptr<float>(), K, groups, K / groups};
#if defined(KR_DECODE_INT8_VNNI) || defined(KR_DECODE_INT8_AVX2)
      if (const int64_t B = int8_block(K / groups, kInt8MinBlock); B > 0) {
        int8_t* q = scratch(xq_buf, N * K);
        float* s = scratch(xs_buf, N * (K / B));
        QuantizedX qx{q, s, K, B};
#if defined(KR_DECODE_INT8_VNNI)
        thread_local std::vector<int32_t> xc_buf;
        int32_t* corr = scratch(xc_buf, N * (K / B));
        quantize_x(xp, N, K, B, q, s, corr);
        for (int64_t i = 0; i < N * (K / B); ++i) corr[i] *= 128;
        qx.corr = corr;
        if (B % Zmm::kBytes == 0) {
          launch(Int8DotVnni<Zmm>{qx, w});
        } else if (B % Ymm::kBytes == 0) {
          launch(Int8DotVnni<Ymm>{qx, w});
        } else {
          launch(Int8DotVnni<Xmm>{qx, w});
        }
#else
        quantize_x(xp, N, K, B, q, s);
        launch(Int8DotAvx2{qx, w});
#endif
        break;
      }
#endif
      launch(FloatDot<int8_t>{xp, w});
      break;
    }
  }
  return y;
}

}  // namespace

// Declared in ops/cpu_kernels.h.
at::Tensor decode_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales,
                             const std::optional<at::Tensor>& residual) {
  return linear_impl(x, weight, scales, residual, /*swiglu=*/false, "decode_linear");
}

at::Tensor decode_linear_swiglu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& scales) {
  return linear_impl(x, weight, scales, std::nullopt, /*swiglu=*/true, "decode_linear_swiglu");
}

void check_decode_weight(const at::Tensor& weight, const std::optional<at::Tensor>& scales, int64_t K,
                         const char* op, const char* wname, const char* sname) {
  check_weight_kind(weight, op, wname);
  const bool int4 = weight.scalar_type() == at::kByte;
  // K / 2 rather than 2 * weight.size(1): no product that could overflow
  TORCH_CHECK_VALUE(int4 ? K % 2 == 0 && K / 2 == weight.size(1) : K == weight.size(1), op, ": ", wname,
                    " must have in_features = ", K, int4 ? " (int4: size(1) = in_features / 2)" : "",
                    ", got ", shape_str(weight));
  check_scales(weight, scales, K, op, wname, sname);
}

// What x becomes for int8 weights with groups of G inputs: quantized per block of this many
// inputs, or 0 where it stays fp32 (module.cpp exposes these to Python and the tests).
int64_t decode_int8_x_block(int64_t G) {
#if defined(KR_DECODE_INT8_VNNI) || defined(KR_DECODE_INT8_AVX2)
  return int8_block(G, kInt8MinBlock);
#else
  return 0;
#endif
}

// The same for int4 weights.
int64_t decode_int4_x_block(int64_t G) {
#if defined(KR_DECODE_INT4_PAIRS)
  return G > 0 && G % kInt4Block == 0 ? kInt4Block : 0;
#else
  return 0;
#endif
}

// Whether x is rounded to bf16 to meet bf16 weights.
bool decode_bf16_rounds_x() {
#ifdef KR_DECODE_BF16_DP
  return true;
#else
  return false;
#endif
}

// How this build computes decode_linear for each weight dtype.
std::string decode_linear_kernel(c10::ScalarType weight_dtype) {
  switch (weight_dtype) {
    case at::kBFloat16:
#ifdef KR_DECODE_BF16_DP
      return "avx512-bf16 dot products (x rounded to bf16)";
#else
      return "widened to fp32, fp32 FMA";
#endif
    case at::kChar:
#if defined(KR_DECODE_INT8_VNNI)
      return "avx512-vnni int8 dot products (x quantized to int8 per block of gcd(group, 128) inputs)";
#elif defined(KR_DECODE_INT8_AVX2)
      return "avx2 int8 dot products (x quantized to int8 per block of gcd(group, 128) inputs)";
#else
      return "widened to fp32, fp32 FMA";
#endif
    case at::kByte:
#if defined(KR_DECODE_INT4_QUADS)
      return "int4 unpacked in registers four blocks at a time, avx512-vnni int8 dot products (x quantized to int8 per block of 32 inputs)";
#elif defined(KR_DECODE_INT4_PAIRS)
      return "int4 unpacked in registers two blocks at a time, avx2 int8 dot products (x quantized to int8 per block of 32 inputs)";
#else
      return "int4 unpacked to int8, widened to fp32, fp32 FMA";
#endif
    default:
      return "fp32 FMA";
  }
}

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("decode_linear", &decode_linear_cpu);
  m.impl("decode_linear_swiglu", &decode_linear_swiglu_cpu);
}

}  // namespace kr
