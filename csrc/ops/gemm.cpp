// The GEMM layer's decisions (which path a dtype takes on this machine) and its tensor-level
// entry point; the tile GEMMs are inline in gemm.h. Also the kernel of gemm_for_tests, the op
// through which tests check both levels against float64.
#include "ops/gemm.h"

#include <ATen/cpu/Utils.h>

#include <array>
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

void mm_acc(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb, at::Tensor& c, bool accumulate) {
  const at::Tensor opa = ta ? a.t() : a;
  const at::Tensor opb = tb ? b.t() : b;
  if (a.scalar_type() == c.scalar_type()) {
    if (accumulate) {
      c.addmm_(opa, opb);
    } else {
      at::mm_out(c, opa, opb);
    }
    return;
  }
  const at::Tensor prod = at::mm(opa, opb);
  if (accumulate) {
    c.add_(prod);
  } else {
    c.copy_(prod);
  }
}

namespace {

// gemm_for_tests: returns c (+)= op(a) @ op(b) through tile_mm (tiles=True: no transposes,
// rows of a and b may be strided) or mm_acc.
at::Tensor gemm_for_tests_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c_in, bool ta,
                              bool tb, bool accumulate, bool tiles) {
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
  TORCH_CHECK_TYPE(c.scalar_type() == at::toOpMathType(a.scalar_type()), op,
                   ": the tile GEMM writes c in the accumulation dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), op, [&] {
    Scratch<scalar_t> ws;
    tile_mm<scalar_t>(M, N, K, a.const_data_ptr<scalar_t>(), std::max<int64_t>(a.stride(0), K),
                      b.const_data_ptr<scalar_t>(), std::max<int64_t>(b.stride(0), N), accumulate,
                      c.mutable_data_ptr<acc_t<scalar_t>>(), N, ws);
    tile_done<scalar_t>();
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) { m.impl("gemm_for_tests", &gemm_for_tests_cpu); }

}  // namespace kr::gemm
