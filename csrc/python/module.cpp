// The Python module kr_mini_llm._C. Importing it loads the library, which runs the
// TORCH_LIBRARY registrations of the ops; it also holds the TransformerConfig binding.
#include <pybind11/pybind11.h>
#include <c10/core/ScalarType.h>

#define KR_STR2(x) #x
#define KR_STR(x) KR_STR2(x)

namespace kr {
namespace gemm {
bool vnni_available(c10::ScalarType dtype);
double peak_gflops(c10::ScalarType dtype, double seconds);
}
void bind_config(pybind11::module_& m);
void bind_yaml(pybind11::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "kr-mini-llm native library: fused CPU kernels (torch.ops.kr_mini_llm) and TransformerConfig";
  m.def("simd_capability", [] { return std::string(KR_STR(CPU_CAPABILITY)); },
        "The SIMD level the CPU kernels were compiled for (DEFAULT, AVX2, AVX512).");
  m.def("vnni_tile_gemm", [](bool half) {
    return kr::gemm::vnni_available(half ? c10::kHalf : c10::kBFloat16);
  }, "Whether the kernels' bf16 (half=False) / fp16 (half=True) tile GEMMs use native dot products "
     "(oneDNN's VNNI brgemm: AMX or AVX512-BF16/FP16) here, rather than widening to fp32.");
  m.def("peak_gflops", [](bool bf16, double seconds) {
    return kr::gemm::peak_gflops(bf16 ? c10::kBFloat16 : c10::kFloat, seconds);
  }, "Measured peak GFLOP/s on all threads: fp32 FMA peak at the kernels' build ISA, or (bf16=True) "
     "oneDNN's bf16 dot-product brgemm on cache-resident tiles, 0 where bf16 is not native. The "
     "benchmarks' MFU denominator.");
  kr::bind_config(m);
  kr::bind_yaml(m);
}
