// Decode-time linears: y = x W^T for a few rows of x (batch x new tokens, about 1-16), where
// reading W once is the whole cost. Weights are fp32, bf16, or int8 with symmetric fp32 scales
// per group of G consecutive inputs (G = K is one scale per output channel); x is fp32 or bf16
// and every product is accumulated in fp32.
//
// Layout of the work: output rows are split into blocks of JB rows, blocks are spread over the
// threads (at::parallel_for), and each block streams its JB weight rows once while it keeps
// JB x NR fp32 accumulators in registers for up to NR rows of x (more rows of x: the block is
// re-run from L1 for the next NR rows). Int8 weights are widened to fp32 and scaled per group
// before the FMA, so the group scale costs one multiply per weight vector whatever the row count.
//
// decode_linear_swiglu computes silu(x Wg^T) * (x Wu^T) for W = [Wg; Wu] stacked along the
// outputs: each block reads matching gate and up rows, so the [N, 2I] projection never exists.
// These are inference ops: they have no backward (the Python face says so when asked for one).
#include "ops/common.h"

#include <cmath>
#include <type_traits>
#include <utility>

namespace kr {
namespace {

using VF = Vectorized<float>;
constexpr int64_t kVL = VF::size();
// Rows of x per pass: JB x NR accumulators must stay in registers (32 zmm; 16 ymm / NEON q).
constexpr int kMaxRows = kVL >= 16 ? 8 : 4;
// Software prefetch distance along each weight row (GCC/Clang builtin: x86 and Arm alike).
constexpr int64_t kPrefetchBytes = 1024;

// Weight lanes widened to fp32. The partial forms read only n < kVL elements (zeros after).
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
  static inline VF load(const int8_t* p) {
    return at::vec::convert<float>(Vectorized<int8_t>::loadu(p, kVL));
  }
  static inline VF load(const int8_t* p, int64_t n) {
    __at_align__ int8_t buf[Vectorized<int8_t>::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
    return load(buf);
  }
};

// The weights as the kernel sees them: M rows of K, and for int8 `groups` scales per row.
template <typename W>
struct Weights {
  const W* data;
  const float* scales;  // nullptr unless int8: [M, groups]
  int64_t K, groups, group_size;
};

// acc[jb][n] = sum_k x[n][k] * w[rows[jb]][k] for NR rows of x (leading dim ldx) and JB weight rows.
// The full-vector loop has no branches, so the accumulators live in registers; tails are separate.
// Calls f(std::integral_constant<int, I>) for I = 0..N-1, unrolled at compile time: the
// accumulator arrays below are then indexed by constants only and stay in registers.
template <int N, typename F, int... I>
inline void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void static_for(F&& f) {
  static_for_impl<N>(std::forward<F>(f), std::make_integer_sequence<int, N>{});
}

template <typename W, int NR, int JB>
inline void dot_block(const float* x, int64_t ldx, const Weights<W>& w, const int64_t* rows,
                      float (&out)[JB][NR]) {
  constexpr bool kInt8 = std::is_same_v<W, int8_t>;
  VF acc[JB][NR];
  static_for<JB>([&](auto jb) { static_for<NR>([&](auto n) { acc[jb][n] = VF(0.f); }); });
  const W* wr[JB];
  for (int jb = 0; jb < JB; ++jb) wr[jb] = w.data + rows[jb] * w.K;
  const int64_t G = w.group_size;
  // One vector of every row: full (cnt = kVL, no masks) or the tail of a group.
  auto step = [&](int64_t k, auto full, int64_t cnt, const VF* s) {
    VF xv[NR];
    static_for<NR>([&](auto n) {
      if constexpr (decltype(full)::value) {
        xv[n] = VF::loadu(x + n * ldx + k);
      } else {
        xv[n] = VF::loadu(x + n * ldx + k, cnt);
      }
    });
    static_for<JB>([&](auto jb) {
      VF wv;
      if constexpr (decltype(full)::value) {
        __builtin_prefetch(wr[jb] + k + kPrefetchBytes / sizeof(W));
        wv = WeightLoad<W>::load(wr[jb] + k);
      } else {
        wv = WeightLoad<W>::load(wr[jb] + k, cnt);
      }
      if constexpr (kInt8) wv = wv * s[jb];
      static_for<NR>([&](auto n) { acc[jb][n] = at::vec::fmadd(wv, xv[n], acc[jb][n]); });
    });
  };
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

// The output rows of one block of work, and where each of its JB dot products goes.
enum class Epilogue { kPlain, kSwiGLU };

template <typename W, typename T, int NR, int JB, Epilogue E>
inline void run_block(const float* x, int64_t ldx, const Weights<W>& w, int64_t j0, int64_t half,
                      T* y, int64_t ldy, const T* residual) {
  // kPlain: JB consecutive rows j0..; kSwiGLU: JB/2 gate rows j0.. and the up rows half + j0..
  int64_t rows[JB];
  constexpr int kOut = E == Epilogue::kPlain ? JB : JB / 2;
  for (int i = 0; i < kOut; ++i) {
    rows[i] = j0 + i;
    if constexpr (E == Epilogue::kSwiGLU) rows[kOut + i] = half + j0 + i;
  }
  float out[JB][NR];
  dot_block<W, NR, JB>(x, ldx, w, rows, out);
  for (int n = 0; n < NR; ++n) {
    for (int i = 0; i < kOut; ++i) {
      float v;
      if constexpr (E == Epilogue::kPlain) {
        v = out[i][n];
        if (residual != nullptr) v += static_cast<float>(residual[n * ldy + j0 + i]);
      } else {
        const float gate = out[i][n];
        v = gate / (1.f + std::exp(-gate)) * out[kOut + i][n];
      }
      y[n * ldy + j0 + i] = static_cast<T>(v);
    }
  }
}

// All N rows of x against output rows [j0, j0 + kOut * count): blocks of JB, rows in passes of NR.
template <typename W, typename T, int JB, Epilogue E>
void run_range(const float* x, int64_t N, int64_t K, const Weights<W>& w, int64_t j0, int64_t j1,
               int64_t half, T* y, int64_t ldy, const T* residual) {
  constexpr int kOut = E == Epilogue::kPlain ? JB : JB / 2;
  for (int64_t j = j0; j < j1; j += kOut) {
    for (int64_t n0 = 0; n0 < N; n0 += kMaxRows) {
      const float* xb = x + n0 * K;
      T* yb = y + n0 * ldy;
      const T* rb = residual ? residual + n0 * ldy : nullptr;
      switch (std::min<int64_t>(kMaxRows, N - n0)) {
#define KR_ROWS_CASE(R)                                                         \
  case R:                                                                       \
    if constexpr (R <= kMaxRows) run_block<W, T, R, JB, E>(xb, K, w, j, half, yb, ldy, rb); \
    break;
        KR_ROWS_CASE(1) KR_ROWS_CASE(2) KR_ROWS_CASE(3) KR_ROWS_CASE(4)
        KR_ROWS_CASE(5) KR_ROWS_CASE(6) KR_ROWS_CASE(7) KR_ROWS_CASE(8)
#undef KR_ROWS_CASE
        default:
          break;
      }
    }
  }
}

// Output rows per block: 4 weight streams keep the loads busy; with many rows of x the JB x NR
// accumulators would not fit in the registers, so JB = 2 there. SwiGLU blocks hold gate/up pairs.
template <typename W, typename T, Epilogue E, int JB>
void run_jb(const float* x, int64_t N, const Weights<W>& w, int64_t outputs, T* y, const T* residual) {
  constexpr int kOut = E == Epilogue::kPlain ? JB : JB / 2;
  const int64_t K = w.K, half = outputs;
  const int64_t full_blocks = outputs / kOut;
  // Enough weight bytes per task to pay for the fork, small enough that every thread streams.
  const int64_t bytes_per_block = static_cast<int64_t>(sizeof(W)) * K * JB;
  const int64_t grain = std::max<int64_t>(1, (int64_t{16} << 10) / bytes_per_block);
  at::parallel_for(0, full_blocks, grain, [&](int64_t b0, int64_t b1) {
    run_range<W, T, JB, E>(x, N, K, w, b0 * kOut, b1 * kOut, half, y, outputs, residual);
  });
  // The last outputs % kOut rows, one (or one gate/up pair) at a time.
  constexpr int JB1 = E == Epilogue::kPlain ? 1 : 2;
  run_range<W, T, JB1, E>(x, N, K, w, full_blocks * kOut, outputs, half, y, outputs, residual);
}

template <typename W, typename T, Epilogue E>
void run(const float* x, int64_t N, const Weights<W>& w, int64_t outputs, T* y, const T* residual) {
  constexpr int64_t kFewRows = kVL >= 16 ? 4 : 2;
  if (N <= kFewRows) {
    run_jb<W, T, E, 4>(x, N, w, outputs, y, residual);
  } else {
    run_jb<W, T, E, 2>(x, N, w, outputs, y, residual);
  }
}

void check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales,
                const char* op) {
  check_cpu(x, op, "x");
  check_cpu(weight, op, "weight");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
                   ": x must be float32 or bfloat16, got ", x.scalar_type());
  const auto wt = weight.scalar_type();
  TORCH_CHECK_TYPE(wt == at::kFloat || wt == at::kBFloat16 || wt == at::kChar, op,
                   ": weight must be float32, bfloat16 or int8, got ", wt);
  check_dim(weight, 2, op, "weight", "[out_features, in_features]");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == weight.size(1), op, ": x [..., in_features] must end in ",
                    "in_features = weight.size(1) = ", weight.size(1), ", got x ", shape_str(x));
  if (wt == at::kChar) {
    TORCH_CHECK_VALUE(scales.has_value(), op, ": int8 weight needs scales [out_features, groups] (float32)");
    const at::Tensor& s = *scales;
    check_cpu(s, op, "scales");
    TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, op, ": scales must be float32, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == weight.size(0) && s.size(1) >= 1 &&
                          weight.size(1) % s.size(1) == 0,
                      op, ": scales must be [out_features, groups] = [", weight.size(0),
                      ", G] with G dividing in_features ", weight.size(1), ", got ", shape_str(s));
  } else {
    TORCH_CHECK_VALUE(!scales.has_value(), op, ": scales are only for int8 weights, got ", wt, " weight");
  }
}

at::Tensor linear_impl(const at::Tensor& x_, const at::Tensor& weight_, const std::optional<at::Tensor>& scales_,
                       const std::optional<at::Tensor>& residual_, bool swiglu, const char* op) {
  check_args(x_, weight_, scales_, op);
  const int64_t M = weight_.size(0), K = weight_.size(1);
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
  auto launch = [&](auto wtag, auto ttag) {
    using W = decltype(wtag);
    using T = decltype(ttag);
    const int64_t groups = scales.defined() ? scales.size(1) : 1;
    const Weights<W> w{weight.const_data_ptr<W>(), scales.defined() ? scales.const_data_ptr<float>() : nullptr,
                       K, groups, K / groups};
    T* yp = y.mutable_data_ptr<T>();
    const T* rp = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
    if (swiglu) {
      run<W, T, Epilogue::kSwiGLU>(xp, N, w, outputs, yp, nullptr);
    } else {
      run<W, T, Epilogue::kPlain>(xp, N, w, outputs, yp, rp);
    }
  };
  auto with_out = [&](auto wtag) {
    if (y.scalar_type() == at::kFloat) {
      launch(wtag, float{});
    } else {
      launch(wtag, at::BFloat16{});
    }
  };
  switch (weight.scalar_type()) {
    case at::kFloat: with_out(float{}); break;
    case at::kBFloat16: with_out(at::BFloat16{}); break;
    default: with_out(int8_t{}); break;
  }
  return y;
}

at::Tensor decode_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales,
                             const std::optional<at::Tensor>& residual) {
  return linear_impl(x, weight, scales, residual, /*swiglu=*/false, "decode_linear");
}

at::Tensor decode_linear_swiglu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& scales) {
  return linear_impl(x, weight, scales, std::nullopt, /*swiglu=*/true, "decode_linear_swiglu");
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("decode_linear", &decode_linear_cpu);
  m.impl("decode_linear_swiglu", &decode_linear_swiglu_cpu);
}

}  // namespace kr
