// CPU kernels that another op's kernel calls directly, as a C++ function: a decode step runs
// many tiny ops, and a call through the dispatcher costs more than the work.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace kr {

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                double eps);
// rotary's checks of x [B, T, H, D] and its cos/sin tables, naming op and x's role.
void check_rotary_inputs(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                         const char* op, const char* xname);
at::Tensor rotary_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// decode_linear / decode_linear_swiglu, and the check they make of a weight and its scales for
// in_features K (wname / sname: their roles in messages).
at::Tensor decode_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales,
                             const std::optional<at::Tensor>& residual);
at::Tensor decode_linear_swiglu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& scales);
void check_decode_weight(const at::Tensor& weight, const std::optional<at::Tensor>& scales, int64_t K,
                         const char* op, const char* wname, const char* sname);

// decode_attention_step, and its check of the caches ([B, Tmax, Hkv, D], contiguous or head-major, the same
// shape, dtype and layout).
at::Tensor decode_attention_step_cpu(const at::Tensor& qkv, const std::optional<at::Tensor>& q_norm,
                                     const std::optional<at::Tensor>& k_norm, double eps,
                                     const at::Tensor& cos, const at::Tensor& sin,
                                     const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& cache_lens, int64_t num_heads);
void check_kv_caches(const at::Tensor& k_cache, const at::Tensor& v_cache, const char* op);
// decode_stack: every block of a decode step (per-layer lists; checks every layer before any write).
at::Tensor decode_stack_cpu(const at::Tensor& x, at::TensorList norm1, at::TensorList qkv_weight,
                            const c10::List<std::optional<at::Tensor>>& qkv_scales,
                            const c10::List<std::optional<at::Tensor>>& q_norm,
                            const c10::List<std::optional<at::Tensor>>& k_norm, const at::Tensor& cos,
                            const at::Tensor& sin, at::TensorList k_cache, at::TensorList v_cache,
                            const at::Tensor& cache_lens, int64_t num_heads, at::TensorList o_weight,
                            const c10::List<std::optional<at::Tensor>>& o_scales, at::TensorList norm2,
                            at::TensorList gate_up_weight, const c10::List<std::optional<at::Tensor>>& gate_up_scales,
                            at::TensorList down_weight, const c10::List<std::optional<at::Tensor>>& down_scales,
                            double eps);

}  // namespace kr
