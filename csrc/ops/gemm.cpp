// The GEMM layer's decisions (which path a dtype takes on this machine) and its tensor-level
// entry point; the tile GEMMs are inline in gemm.h. Also the kernel of gemm_for_tests, the op
// through which tests check both levels against float64.
#include "ops/gemm.h"

#include <ATen/cpu/Utils.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

namespace kr::gemm {
namespace {

// oneDNN's ONEDNN_MAX_CPU_ISA (or the older DNNL_MAX_CPU_ISA) caps the ISA its kernels use;
// the benchmarks set it to emulate older CPUs. True when the cap (if any) is at or above
// `level` in oneDNN's x86 order.
bool onednn_isa_allows(const char* level) {
  static constexpr std::array<const char*, 15> kOrder = {
      "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
      "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
      "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL"};
  const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (cap == nullptr) cap = std::getenv("DNNL_MAX_CPU_ISA");
  if (cap == nullptr || *cap == '\0' || std::strcmp(cap, "DEFAULT") == 0) return true;
  std::string c(cap);
  for (auto& ch : c) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  int icap = -1, ilevel = -1;
  for (int i = 0; i < static_cast<int>(kOrder.size()); ++i) {
    if (c == kOrder[i]) icap = i;
    if (std::strcmp(level, kOrder[i]) == 0) ilevel = i;
  }
  return icap < 0 || icap >= ilevel;  // an unknown name: oneDNN ignores it too
}

bool cpu_has(const char* flag) {
  static const auto caps = at::cpu::get_cpu_capabilities();
  auto it = caps.find(flag);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

// One 1 x 16 x 2 VNNI brgemm: false if ATen/oneDNN refuse it on this machine (no ukernel
// support, or an ISA below what the dtype needs), or if it gives a wrong answer.
template <typename T>
bool probe() {
  try {
    std::array<T, 2> a = {T(1.0f), T(2.0f)};
    std::array<T, 32> b;
    for (int n = 0; n < 16; ++n) {
      b[2 * n] = T(float(n));
      b[2 * n + 1] = T(1.0f);
    }
    std::array<float, 16> c{};
    at::native::cpublas::brgemm(1, 16, 2, 2, 16, 16, false, a.data(), b.data(), c.data(), true);
    at::native::cpublas::brgemm_release();
    for (int n = 0; n < 16; ++n)
      if (c[n] != float(n) + 2.0f) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

bool vnni_available(at::ScalarType dtype) {
  // Native dot products only: oneDNN would also run bf16 on plain AVX-512 by emulation, slower
  // than widening to fp32.
  if (dtype == at::kBFloat16) {
    return (cpu_has("avx512_bf16") || cpu_has("amx_bf16")) && onednn_isa_allows("AVX512_CORE_BF16") &&
           probe<at::BFloat16>();
  }
  if (dtype == at::kHalf) {
    return (cpu_has("avx512_fp16") || cpu_has("amx_fp16")) && onednn_isa_allows("AVX512_CORE_FP16") &&
           probe<at::Half>();
  }
  return false;
}

namespace {

// tn_vnni's blocking (measured on AMX, a 2-core Xeon, K = 262..2048 rows of a, N = 768): K is
// zero-padded to a multiple of 32 (a ragged K made oneDNN's ukernel 3x slower) and taken in
// blocks of 256, the outer loop, so that block of b (256 x N, packed) stays in L2 while each
// thread sweeps its rows of c; 32-row slabs of a^T are transposed per block.
constexpr int64_t kTnRows = 32, kKPad = 32, kKBlock = 256;
constexpr int64_t kTnMinProductBytes = 8 << 20;

// c[M, N] (fp32, ld ldc) (+)= a^T @ b for a [K, M] (ld lda) and b [K, N] (ld ldb), 16-bit, on
// the VNNI brgemm with fp32 accumulation straight into c: no 16-bit product and no temporary.
// b is packed once into panels of kPanel columns shared by all threads.
template <typename T>
void tn_vnni(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate) {
  const int64_t Kp = round_up(K, kKPad);
  const int64_t panels = (N + kPanel - 1) / kPanel;
  std::vector<T> bp(panels * Kp * kPanel);  // zero-initialised: the padded rows of K stay 0
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kPanel, w = std::min(kPanel, N - n0);
      pack_vnni(K, w, b + n0, ldb, bp.data() + p * Kp * kPanel, round_up(w, 16));
    }
  });
  const int64_t blocks = (M + kTnRows - 1) / kTnRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> slab(kTnRows * kKBlock);
    std::vector<float> cw;
    for (int64_t k0 = 0; k0 < Kp; k0 += kKBlock) {
      const int64_t kb = std::min(kKBlock, Kp - k0), kreal = std::max<int64_t>(0, std::min(kb, K - k0));
      const bool acc = accumulate || k0 > 0;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t m0 = blk * kTnRows, mb = std::min(kTnRows, M - m0);
        for (int64_t k = 0; k < kreal; ++k) {
          const T* ar = a + (k0 + k) * lda + m0;
          for (int64_t i = 0; i < mb; ++i) slab[i * kb + k] = ar[i];
        }
        for (int64_t i = 0; i < mb; ++i) std::fill(slab.data() + i * kb + kreal, slab.data() + (i + 1) * kb, T(0));
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t n0 = p * kPanel, w = std::min(kPanel, N - n0);
          vnni_panel_mm(mb, w, kb, slab.data(), kb, bp.data() + p * Kp * kPanel + k0 * round_up(w, 16),
                        round_up(w, 16), acc, c + m0 * ldc + n0, ldc, cw);
        }
      }
    }
    tile_done<T>();
  });
}

}  // namespace

void mm_acc(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb, at::Tensor& c, bool accumulate) {
  // a^T @ b of 16-bit operands into fp32 (the weight gradient of a linear layer): the VNNI
  // brgemm accumulates into c directly where the dot products are native, once the 16-bit
  // product oneDNN would return is a fresh buffer of more than kTnMinProductBytes (measured on
  // AMX: 2.8x faster for the [32000, 768] LM head, 2x slower for model_tiny's [8000, 256],
  // where transposing a costs more than the product's round trip through the heap).
  if (ta && !tb && c.scalar_type() == at::kFloat && a.stride(1) == 1 && b.stride(1) == 1 &&
      c.is_contiguous() && a.size(0) > 0 && c.numel() * a.element_size() > kTnMinProductBytes) {
    const int64_t M = a.size(1), N = b.size(1), K = a.size(0);
    if (a.scalar_type() == at::kBFloat16 && use_vnni<at::BFloat16>()) {
      tn_vnni(M, N, K, a.const_data_ptr<at::BFloat16>(), a.stride(0), b.const_data_ptr<at::BFloat16>(),
              b.stride(0), c.mutable_data_ptr<float>(), N, accumulate);
      return;
    }
    if (a.scalar_type() == at::kHalf && use_vnni<at::Half>()) {
      tn_vnni(M, N, K, a.const_data_ptr<at::Half>(), a.stride(0), b.const_data_ptr<at::Half>(), b.stride(0),
              c.mutable_data_ptr<float>(), N, accumulate);
      return;
    }
  }
  const at::Tensor opa = ta ? a.t() : a;
  const at::Tensor opb = tb ? b.t() : b;
  if (a.scalar_type() == c.scalar_type() && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble ||
                                             (a.scalar_type() == at::kBFloat16 ? use_vnni<at::BFloat16>()
                                                                               : use_vnni<at::Half>()))) {
    if (accumulate) {
      c.addmm_(opa, opb);
    } else {
      at::mm_out(c, opa, opb);
    }
    return;
  }
  // bf16/fp16 without native dot products: oneDNN would emulate them, several times slower
  // than fp32, so the operands are widened (exact) and multiplied in fp32.
  const bool widen = (a.scalar_type() == at::kBFloat16 && !use_vnni<at::BFloat16>()) ||
                     (a.scalar_type() == at::kHalf && !use_vnni<at::Half>());
  if (widen && c.scalar_type() == at::kFloat) {
    mm_acc(opa.to(at::kFloat), false, opb.to(at::kFloat), false, c, accumulate);
    return;
  }
  const at::Tensor prod = widen ? at::mm(opa.to(at::kFloat), opb.to(at::kFloat)) : at::mm(opa, opb);
  if (accumulate) {
    c.add_(prod);
  } else {
    c.copy_(prod);
  }
}

namespace {

// fp32 FMAs per call of fma_burst: 12 independent chains (enough to cover FMA latency x ports on
// current x86 and Arm cores) of 256 dependent steps, in the build's vector width.
constexpr int kChains = 12, kSteps = 256;

// Read on every call, so the compiler can neither fold the chains nor hoist a call out of a loop.
volatile float g_fma_mul = 0.999f;

float fma_burst(float seed) {
  using V = Vectorized<float>;
  V acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = V(seed + c);
  const V m(g_fma_mul), a(0.001f);
  for (int s = 0; s < kSteps; ++s)
    for (int c = 0; c < kChains; ++c) acc[c] = at::vec::fmadd(acc[c], m, a);
  V sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = sum + acc[c];
  return at::vec::vec_reduce_all<float>([](V& x, V& y) { return x + y; }, sum);
}

// Runs body() on every thread for `seconds`; returns the total rate of `flops_per_call`.
template <typename Body>
double rate_on_all_threads(double seconds, double flops_per_call, const Body& body) {
  const int nt = at::get_num_threads();
  std::vector<double> rate(nt, 0.0);
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t tid = b; tid < e; ++tid) {
      const auto t0 = std::chrono::steady_clock::now();
      int64_t n = 0;
      double dt = 0.0;
      while (dt < seconds) {
        for (int r = 0; r < 64; ++r, ++n) body(tid);
        dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      rate[tid] = flops_per_call * n / dt;
    }
  });
  double total = 0.0;
  for (double r : rate) total += r;
  return total / 1e9;
}

}  // namespace

double peak_gflops(at::ScalarType dtype, double seconds) {
  if (dtype == at::kFloat) {
    // The FMA peak: 2 flops per lane per FMA, in the kernels' build ISA.
    volatile float sink = 0.0f;
    const double flops = 2.0 * kChains * kSteps * Vectorized<float>::size();
    return rate_on_all_threads(seconds, flops, [&](int64_t tid) { sink = sink + fma_burst(float(tid)); });
  }
  // bf16: the dot-product peak of oneDNN's VNNI brgemm (AMX or AVX512-BF16) on L1/L2-resident
  // tiles; 0 where bf16 is not native.
  TORCH_CHECK_VALUE(dtype == at::kBFloat16, "peak_gflops: float32 or bfloat16, got ", dtype);
  if (!use_vnni<at::BFloat16>()) return 0.0;
  constexpr int64_t M = 32, N = 64, K = 256;
  const int nt = at::get_num_threads();
  std::vector<std::vector<at::BFloat16>> a(nt, std::vector<at::BFloat16>(M * K, at::BFloat16(0.5f)));
  std::vector<std::vector<at::BFloat16>> b(nt, std::vector<at::BFloat16>(K * N, at::BFloat16(0.25f)));
  std::vector<std::vector<float>> c(nt, std::vector<float>(M * N, 0.0f));
  const double gf = rate_on_all_threads(seconds, 2.0 * M * N * K, [&](int64_t tid) {
    at::native::cpublas::brgemm(M, N, K, K, N, N, true, a[tid].data(), b[tid].data(), c[tid].data(), true);
  });
  at::parallel_for(0, nt, 1, [](int64_t, int64_t) { at::native::cpublas::brgemm_release(); });
  return gf;
}

namespace {

// gemm_for_tests: returns c (+)= op(a) @ op(b) through tile_mm (tiles=True: no transposes,
// rows of a and b may be strided) or mm_acc. n_cols / k_rows >= 0: c[:, :n] (+)= a[:, :k] @
// b[:k, :n] by tile_mm on b packed whole (PackedB), the rest of c as given.
at::Tensor gemm_for_tests_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c_in, bool ta,
                              bool tb, bool accumulate, bool tiles, int64_t n_cols, int64_t k_rows) {
  constexpr const char* op = "gemm_for_tests";
  check_float(a, op, "a");
  check_same_dtype(a, "a", b, "b", op);
  check_dim(a, 2, op, "a", "[M, K]");
  check_dim(b, 2, op, "b", "[K, N]");
  const int64_t M = ta ? a.size(1) : a.size(0), K = ta ? a.size(0) : a.size(1);
  const int64_t N = tb ? b.size(0) : b.size(1);
  TORCH_CHECK_VALUE((tb ? b.size(1) : b.size(0)) == K, op, ": inner dimensions differ: a ", shape_str(a),
                    ", b ", shape_str(b));
  TORCH_CHECK_VALUE(c_in.dim() == 2 && c_in.size(0) == M && c_in.size(1) == N, op, ": c must be [", M, ", ",
                    N, "], got ", shape_str(c_in));
  at::Tensor c = c_in.clone();
  if (!tiles) {
    mm_acc(a, ta, b, tb, c, accumulate);
    return c;
  }
  TORCH_CHECK_VALUE(!ta && !tb, op, ": the tile GEMM takes row-major operands (no transposes)");
  TORCH_CHECK_VALUE(a.stride(1) == 1 && b.stride(1) == 1, op, ": tile operands need unit column stride");
  // The tile GEMM reads row i at i * ld: rows closer than a row's width (expanded or overlapping
  // views) would be read past the tensor's last element.
  TORCH_CHECK_VALUE((M <= 1 || a.stride(0) >= K) && (K <= 1 || b.stride(0) >= N), op,
                    ": tile operands need rows at least a row apart, got a strides ", a.strides(),
                    ", b strides ", b.strides(), " (pass .contiguous())");
  TORCH_CHECK_TYPE(c.scalar_type() == at::toOpMathType(a.scalar_type()), op,
                   ": the tile GEMM writes c in the accumulation dtype");
  const bool part = n_cols >= 0 || k_rows >= 0;
  TORCH_CHECK_VALUE(n_cols <= N && k_rows <= K, op, ": n_cols (", n_cols, ") and k_rows (", k_rows,
                    ") must be at most N = ", N, " and K = ", K);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), op, [&] {
    Scratch<scalar_t> ws;
    const int64_t lda = std::max<int64_t>(a.stride(0), K), ldb = std::max<int64_t>(b.stride(0), N);
    if (part) {
      PackedB<scalar_t> pb;
      pb.pack(K, N, b.const_data_ptr<scalar_t>(), ldb);
      tile_mm<scalar_t>(M, a.const_data_ptr<scalar_t>(), lda, pb, accumulate, c.mutable_data_ptr<acc_t<scalar_t>>(),
                        N, ws, n_cols, k_rows);
    } else {
      tile_mm<scalar_t>(M, N, K, a.const_data_ptr<scalar_t>(), lda, b.const_data_ptr<scalar_t>(), ldb, accumulate,
                        c.mutable_data_ptr<acc_t<scalar_t>>(), N, ws);
    }
    tile_done<scalar_t>();
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) { m.impl("gemm_for_tests", &gemm_for_tests_cpu); }

}  // namespace kr::gemm
