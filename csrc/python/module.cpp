// The Python module kr_mini_llm._C. Importing it loads the library, which runs the
// TORCH_LIBRARY registrations of the ops; it also holds the TransformerConfig binding.
#include <pybind11/pybind11.h>

#define KR_STR2(x) #x
#define KR_STR(x) KR_STR2(x)

namespace kr {
void bind_config(pybind11::module_& m);
void bind_yaml(pybind11::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "kr-mini-llm native library: fused CPU kernels (torch.ops.kr_mini_llm) and TransformerConfig";
  m.def("simd_capability", [] { return std::string(KR_STR(CPU_CAPABILITY)); },
        "The SIMD level the CPU kernels were compiled for (DEFAULT, AVX2, AVX512).");
  kr::bind_config(m);
  kr::bind_yaml(m);
}
