// The Python module kr_mini_llm._C. Importing it loads the library, which runs the
// TORCH_LIBRARY registrations of the ops; it also holds the TransformerConfig binding.
#include <pybind11/pybind11.h>
#include <c10/core/ScalarType.h>

#include <string>

#define KR_STR2(x) #x
#define KR_STR(x) KR_STR2(x)

namespace kr {
namespace gemm {
bool vnni_available(c10::ScalarType dtype);
double peak_gflops(c10::ScalarType dtype, double seconds);
}
std::string decode_linear_kernel(c10::ScalarType weight_dtype);
int64_t decode_int8_x_block(int64_t group_size);
int64_t decode_int4_x_block(int64_t group_size);
bool decode_bf16_rounds_x();
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
  m.def("decode_linear_kernel", [](const std::string& weight_dtype) {
    const auto t = weight_dtype == "int8"   ? c10::kChar
                   : weight_dtype == "int4" ? c10::kByte
                   : weight_dtype == "bf16" ? c10::kBFloat16
                                            : c10::kFloat;
    return kr::decode_linear_kernel(t);
  }, "How decode_linear computes with 'fp32', 'bf16', 'int8' or 'int4' weights in this build (which "
     "dot products, and whether x is rounded or quantized to meet them).");
  m.def("decode_int8_x_block", &kr::decode_int8_x_block,
        "For int8 weights with groups of this many inputs: the block of inputs x is quantized over "
        "(symmetric int8), or 0 where x stays fp32.");
  m.def("decode_int4_x_block", &kr::decode_int4_x_block,
        "For int4 weights with groups of this many inputs: the block of inputs x is quantized over "
        "(symmetric int8), or 0 where x stays fp32.");
  m.def("decode_bf16_rounds_x", &kr::decode_bf16_rounds_x,
        "Whether decode_linear rounds x to bf16 to meet bf16 weights (native bf16 dot products).");
  kr::bind_config(m);
  kr::bind_yaml(m);
}
