// One Transformer block of a decode step in one call:
//   h = rms_norm(x, norm1);  a = decode_attention_step(h Wqkv^T, ...)  (appends to the caches)
//   x = x + a Wo^T;  h = rms_norm(x, norm2);  x = x + (silu(h Wg^T) * (h Wu^T)) Wdown^T
// The parts are the ops' own CPU kernels called as C++ functions, so the result is the bits of
// the seven calls one by one, with one dispatch instead of seven: at a small model's decode step
// the dispatches cost more than the norms and the attention's preparation. Every argument is
// checked before the caches are written.
#include "ops/common.h"
#include "ops/cpu_kernels.h"

namespace kr {
namespace {

constexpr const char* kOp = "decode_block";

void check_norm(const at::Tensor& w, int64_t C, const char* name) {
  check_cpu(w, kOp, name);
  check_float(w, kOp, name);
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == C, kOp, ": ", name, " must be [C] = [", C,
                    "] (x's hidden size), got ", shape_str(w));
}

void check_out_features(const at::Tensor& w, int64_t C, const char* name) {
  TORCH_CHECK_VALUE(w.size(0) == C, kOp, ": ", name, " must have out_features = C = ", C,
                    " (x's hidden size), got ", shape_str(w));
}

at::Tensor decode_block_cpu(const at::Tensor& x, const at::Tensor& norm1, const at::Tensor& qkv_weight,
                            const std::optional<at::Tensor>& qkv_scales, const std::optional<at::Tensor>& q_norm,
                            const std::optional<at::Tensor>& k_norm, const at::Tensor& cos, const at::Tensor& sin,
                            const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& cache_lens,
                            int64_t num_heads, const at::Tensor& o_weight, const std::optional<at::Tensor>& o_scales,
                            const at::Tensor& norm2, const at::Tensor& gate_up_weight,
                            const std::optional<at::Tensor>& gate_up_scales, const at::Tensor& down_weight,
                            const std::optional<at::Tensor>& down_scales, double eps) {
  check_cpu(x, kOp, "x");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, kOp,
                   ": x must be float32 or bfloat16, got ", x.scalar_type());
  check_dim(x, 3, kOp, "x", "[B, S, C]");
  const int64_t C = x.size(2);
  check_norm(norm1, C, "norm1");
  check_norm(norm2, C, "norm2");
  TORCH_CHECK_VALUE(eps >= 0, kOp, ": eps must be >= 0, got ", eps);
  check_kv_caches(k_cache, v_cache, kOp);
  // The attention's output width, num_heads * D: num_heads is a user int, so only where it fits.
  int64_t width = 0;
  TORCH_CHECK_VALUE(num_heads > 0 && mul_add_fits(num_heads, k_cache.size(3), 0, &width), kOp, ": num_heads = ",
                    num_heads, " must be positive, with num_heads * D (D = ", k_cache.size(3),
                    ") within int64");
  check_decode_weight(qkv_weight, qkv_scales, C, kOp, "qkv_weight", "qkv_scales");
  check_decode_weight(o_weight, o_scales, width, kOp, "o_weight", "o_scales");
  check_out_features(o_weight, C, "o_weight");
  check_decode_weight(gate_up_weight, gate_up_scales, C, kOp, "gate_up_weight", "gate_up_scales");
  TORCH_CHECK_VALUE(gate_up_weight.size(0) % 2 == 0, kOp, ": gate_up_weight must stack gate and up rows ",
                    "[2 * intermediate, C], got ", shape_str(gate_up_weight));
  check_decode_weight(down_weight, down_scales, gate_up_weight.size(0) / 2, kOp, "down_weight", "down_scales");
  check_out_features(down_weight, C, "down_weight");
  // qkv's width, cos/sin and the cache rows are checked by the attention step before it writes.
  const at::Tensor h1 = std::get<0>(rms_norm_cpu(x, norm1, eps));
  const at::Tensor qkv = decode_linear_cpu(h1, qkv_weight, qkv_scales, std::nullopt);
  const at::Tensor att =
      decode_attention_step_cpu(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads);
  const at::Tensor x1 = decode_linear_cpu(att, o_weight, o_scales, x);
  const at::Tensor h2 = std::get<0>(rms_norm_cpu(x1, norm2, eps));
  return decode_linear_cpu(decode_linear_swiglu_cpu(h2, gate_up_weight, gate_up_scales), down_weight, down_scales,
                           x1);
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) { m.impl("decode_block", &decode_block_cpu); }

}  // namespace kr
