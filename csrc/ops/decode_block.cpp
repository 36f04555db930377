// One Transformer block of a decode step in one call:
//   h = rms_norm(x, norm1);  a = decode_attention_step(h Wqkv^T, ...)  (appends to the caches)
//   x = x + a Wo^T;  h = rms_norm(x, norm2);  x = x + (silu(h Wg^T) * (h Wu^T)) Wdown^T
// The parts are the ops' own CPU kernels called as C++ functions, so the result is the bits of
// the seven calls one by one, with one dispatch instead of seven: at a small model's decode step
// the dispatches cost more than the norms and the attention's preparation. Every argument is
// checked before the caches are written.
//
// decode_stack runs every block of the model, layer by layer, in one call (lists of the per-layer
// arguments): one dispatch per decode step instead of one per layer. Every layer is checked before
// the first cache is written.
#include "ops/common.h"
#include "ops/cpu_kernels.h"

#include <algorithm>
#include <utility>
#include <vector>

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

// Every check of one block before its attention step runs (which checks qkv's width, cos/sin and
// the cache rows before it writes).
void check_block(const at::Tensor& x, const at::Tensor& norm1, const at::Tensor& qkv_weight,
                 const std::optional<at::Tensor>& qkv_scales, const at::Tensor& k_cache, const at::Tensor& v_cache,
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
}

at::Tensor decode_block_cpu(const at::Tensor& x, const at::Tensor& norm1, const at::Tensor& qkv_weight,
                            const std::optional<at::Tensor>& qkv_scales, const std::optional<at::Tensor>& q_norm,
                            const std::optional<at::Tensor>& k_norm, const at::Tensor& cos, const at::Tensor& sin,
                            const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& cache_lens,
                            int64_t num_heads, const at::Tensor& o_weight, const std::optional<at::Tensor>& o_scales,
                            const at::Tensor& norm2, const at::Tensor& gate_up_weight,
                            const std::optional<at::Tensor>& gate_up_scales, const at::Tensor& down_weight,
                            const std::optional<at::Tensor>& down_scales, double eps) {
  check_block(x, norm1, qkv_weight, qkv_scales, k_cache, v_cache, num_heads, o_weight, o_scales, norm2,
              gate_up_weight, gate_up_scales, down_weight, down_scales, eps);
  const at::Tensor h1 = std::get<0>(rms_norm_cpu(x, norm1, eps));
  const at::Tensor qkv = decode_linear_cpu(h1, qkv_weight, qkv_scales, std::nullopt);
  const at::Tensor att =
      decode_attention_step_cpu(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, cache_lens, num_heads);
  const at::Tensor x1 = decode_linear_cpu(att, o_weight, o_scales, x);
  const at::Tensor h2 = std::get<0>(rms_norm_cpu(x1, norm2, eps));
  return decode_linear_cpu(decode_linear_swiglu_cpu(h2, gate_up_weight, gate_up_scales), down_weight, down_scales,
                           x1);
}

// ---- decode_stack: every block of the model in one call ----------------------------------------
constexpr const char* kStack = "decode_stack";

using OptList = c10::List<std::optional<at::Tensor>>;

// A layer's q/k/v weight rows and q/k norms, which its attention step would check only when it
// runs, after the blocks before it wrote their caches: checked for every layer up front.
void check_stack_layer(int64_t i, const at::Tensor& qkv_weight, const std::optional<at::Tensor>& q_norm,
                       const std::optional<at::Tensor>& k_norm, const at::Tensor& k_cache, const at::Tensor& k0,
                       const at::Tensor& v_cache, int64_t num_heads) {
  TORCH_CHECK_VALUE(k_cache.sizes() == k0.sizes() && k_cache.scalar_type() == k0.scalar_type() &&
                        v_cache.sizes() == k0.sizes() && v_cache.scalar_type() == k0.scalar_type(),
                    kStack, ": layer ", i, "'s caches must be like layer 0's ", shape_str(k0), " ",
                    k0.scalar_type(), " (one KV cache per layer, all alike), got k_cache ", shape_str(k_cache), " ",
                    k_cache.scalar_type(), ", v_cache ", shape_str(v_cache), " ", v_cache.scalar_type());
  const int64_t Hkv = k0.size(2), D = k0.size(3);
  // num_heads * D fits (check_block), so (num_heads + 2 Hkv) * D is formed only where it fits too
  int64_t heads = 0, width = 0;
  TORCH_CHECK_VALUE(mul_add_fits(Hkv, 2, num_heads, &heads) && mul_add_fits(heads, D, 0, &width) &&
                        qkv_weight.size(0) == width,
                    kStack, ": layer ", i, "'s qkv_weight must have (num_heads + 2 Hkv) * D = (", num_heads,
                    " + 2 * ", Hkv, ") * ", D, " rows (q, k and v stacked), got ", shape_str(qkv_weight));
  TORCH_CHECK_VALUE(q_norm.has_value() == k_norm.has_value(), kStack, ": layer ", i,
                    ": q_norm and k_norm go together (qk_norm): pass both or neither");
  for (const auto* nw : {&q_norm, &k_norm}) {
    if (!nw->has_value()) continue;
    const char* name = nw == &q_norm ? "q_norm" : "k_norm";
    check_cpu(**nw, kStack, name);
    check_float(**nw, kStack, name);
    TORCH_CHECK_VALUE((*nw)->dim() == 1 && (*nw)->size(0) == D, kStack, ": layer ", i, "'s ", name,
                      " must be [D] = [", D, "], got ", shape_str(**nw));
  }
}

// No two of the 2n caches share memory: layer i + 1 would write over layer i's rows (a list built as
// [cache] * n). Caches are dense (contiguous or head-major, checked), so each is one byte range.
void check_caches_apart(at::TensorList k_cache, at::TensorList v_cache) {
  struct Range { uintptr_t begin, end; const char* name; size_t layer; };
  std::vector<Range> ranges;
  for (size_t i = 0; i < k_cache.size(); ++i) {
    for (const auto& [c, name] : {std::pair{&k_cache[i], "k_cache"}, std::pair{&v_cache[i], "v_cache"}}) {
      const auto begin = reinterpret_cast<uintptr_t>(c->const_data_ptr());
      ranges.push_back({begin, begin + static_cast<uintptr_t>(c->nbytes()), name, i});
    }
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t j = 1; j < ranges.size(); ++j) {
    const Range &a = ranges[j - 1], &b = ranges[j];
    TORCH_CHECK_VALUE(b.begin >= a.end, kStack, ": layer ", a.layer, "'s ", a.name, " and layer ", b.layer, "'s ",
                      b.name, " share memory: every layer needs caches of its own (KVCache.for_model makes them)");
  }
}

}  // namespace

// Declared in ops/cpu_kernels.h.
at::Tensor decode_stack_cpu(const at::Tensor& x, at::TensorList norm1, at::TensorList qkv_weight,
                            const OptList& qkv_scales, const OptList& q_norm, const OptList& k_norm,
                            const at::Tensor& cos, const at::Tensor& sin, at::TensorList k_cache,
                            at::TensorList v_cache, const at::Tensor& cache_lens, int64_t num_heads,
                            at::TensorList o_weight, const OptList& o_scales, at::TensorList norm2,
                            at::TensorList gate_up_weight, const OptList& gate_up_scales, at::TensorList down_weight,
                            const OptList& down_scales, double eps) {
  const int64_t n = static_cast<int64_t>(norm1.size());
  TORCH_CHECK_VALUE(n > 0, kStack, ": needs at least one layer, got empty lists");
  const std::pair<const char*, int64_t> lens[] = {
      {"qkv_weight", qkv_weight.size()}, {"qkv_scales", qkv_scales.size()}, {"q_norm", q_norm.size()},
      {"k_norm", k_norm.size()}, {"k_cache", k_cache.size()}, {"v_cache", v_cache.size()},
      {"o_weight", o_weight.size()}, {"o_scales", o_scales.size()}, {"norm2", norm2.size()},
      {"gate_up_weight", gate_up_weight.size()}, {"gate_up_scales", gate_up_scales.size()},
      {"down_weight", down_weight.size()}, {"down_scales", down_scales.size()}};
  for (const auto& [name, len] : lens) {
    TORCH_CHECK_VALUE(len == n, kStack, ": every list holds one entry per layer: norm1 has ", n, ", ", name,
                      " has ", len);
  }
  // Every layer checked before the first block writes its cache; a layer's own errors name it.
  for (int64_t i = 0; i < n; ++i) {
    try {
      check_block(x, norm1[i], qkv_weight[i], qkv_scales[i], k_cache[i], v_cache[i], num_heads, o_weight[i],
                  o_scales[i], norm2[i], gate_up_weight[i], gate_up_scales[i], down_weight[i], down_scales[i], eps);
    } catch (const c10::ValueError& e) {
      TORCH_CHECK_VALUE(false, kStack, ": layer ", i, ": ", e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      TORCH_CHECK_TYPE(false, kStack, ": layer ", i, ": ", e.what_without_backtrace());
    }
    check_stack_layer(i, qkv_weight[i], q_norm[i], k_norm[i], k_cache[i], k_cache[0], v_cache[i], num_heads);
  }
  check_caches_apart(k_cache, v_cache);
  // Layer 0's attention step checks cos/sin and the cache rows (the same for every layer) before
  // it writes; each decode_block repeats its layer's checks (well under a microsecond).
  at::Tensor h = x;
  for (int64_t i = 0; i < n; ++i) {
    h = decode_block_cpu(h, norm1[i], qkv_weight[i], qkv_scales[i], q_norm[i], k_norm[i], cos, sin, k_cache[i], v_cache[i],
                  cache_lens, num_heads, o_weight[i], o_scales[i], norm2[i], gate_up_weight[i], gate_up_scales[i],
                  down_weight[i], down_scales[i], eps);
  }
  return h;
}

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("decode_block", &decode_block_cpu);
  m.impl("decode_stack", &decode_stack_cpu);
}

}  // namespace kr
