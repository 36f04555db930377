// The Python module kr_mini_llm._C. Importing it loads the library, which runs the
// TORCH_LIBRARY registrations; it also reports how the library was built.
#include <pybind11/pybind11.h>

#define KR_STR2(x) #x
#define KR_STR(x) KR_STR2(x)

PYBIND11_MODULE(_C, m) {
  m.doc() = "kr-mini-llm native library: fused CPU kernels registered as torch.ops.kr_mini_llm";
  m.def("simd_capability", [] { return std::string(KR_STR(CPU_CAPABILITY)); },
        "The SIMD level the CPU kernels were compiled for (DEFAULT, AVX2, AVX512).");
}
