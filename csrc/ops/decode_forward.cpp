// A model's whole decode step in one call: token ids in, logits out.
//
//   x = embedding rows of ids (embed_weight as decode_linear takes a weight: fp32, bf16, int8 or
//       int4 with its scales; dequantised to fp32)
//   cos/sin = rope tables at positions cache_lens[b] + s
//   x = decode_stack(x, ..., cos, sin, caches, cache_lens, ...)
//   cache_lens += S
//   logits = decode_linear(rms_norm(x, or its last row when last_only, norm), head_weight, head_scales)
//
// Why one call: a step of a small model streams all of its weights, which evicts from the CPU's
// caches the interpreter and dispatcher that would run the half-dozen tiny ops around
// decode_stack. Each of them then costs 30-90 us where it costs 1-10 us warm; on a 2-core Zen 4
// they were 6% of model_small's int8 step. Here they are a few microseconds of C++. The parts are
// the ops' own kernels, so the logits are the bits of the calls one by one. Every argument is
// checked before the first cache row is written; cache_lens advances only after the stack ran.
#include "ops/common.h"
#include "ops/cpu_kernels.h"

#include <cstring>
#include <vector>

namespace kr {
namespace {

constexpr const char* kOp = "decode_forward";
constexpr int64_t kInt4Block = 32;  // inputs per packed int4 block (decode_dot.h's Int4x2)

using OptList = c10::List<std::optional<at::Tensor>>;

// ids [B, S] as int64, each checked to be a row of a table of V rows.
std::vector<int64_t> read_ids(const at::Tensor& ids, int64_t V) {
  check_cpu(ids, kOp, "ids");
  const auto st = ids.scalar_type();
  TORCH_CHECK_TYPE(st == at::kLong || st == at::kInt, kOp, ": ids must be int64 or int32 token ids, got ", st);
  check_dim(ids, 2, kOp, "ids", "[B, S]");
  TORCH_CHECK_VALUE(ids.size(1) > 0, kOp, ": ids must hold at least one token per sequence, got ",
                    shape_str(ids));
  const at::Tensor c = ids.contiguous().to(at::kLong);
  const int64_t* p = c.const_data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + c.numel());
  for (size_t i = 0; i < out.size(); ++i) {
    TORCH_CHECK_VALUE(out[i] >= 0 && out[i] < V, kOp, ": ids[", static_cast<int64_t>(i) / ids.size(1), ", ",
                      static_cast<int64_t>(i) % ids.size(1), "] = ", out[i],
                      " is not a token of the vocabulary: ids must be in [0, ", V, ") (embed_weight's rows)");
  }
  return out;
}

// Row id of a checked weight [V, C] (int4: uint8 [V, C / 2]) as C floats: the values decode_linear
// multiplies by, float(q) * scale for int8 and int4 (as PackedLinear.rows and dequantize_* give them).
void embed_row(const at::Tensor& w, const std::optional<at::Tensor>& scales, int64_t id, int64_t C, float* out) {
  switch (w.scalar_type()) {
    case at::kFloat:
      std::memcpy(out, w.const_data_ptr<float>() + id * C, C * sizeof(float));
      return;
    case at::kBFloat16: {
      const at::BFloat16* r = w.const_data_ptr<at::BFloat16>() + id * C;
      for (int64_t k = 0; k < C; ++k) out[k] = static_cast<float>(r[k]);
      return;
    }
    case at::kChar: {
      const int64_t G = scales->size(1), per = C / G;
      const int8_t* r = w.const_data_ptr<int8_t>() + id * C;
      const float* s = scales->const_data_ptr<float>() + id * G;
      for (int64_t k = 0; k < C; ++k) out[k] = static_cast<float>(r[k]) * s[k / per];
      return;
    }
    default: {  // int4: per block of 32 inputs, 16 bytes: inputs i and 16 + i in byte i's low and high nibble
      const int64_t G = scales->size(1), per = C / G;
      const uint8_t* r = w.const_data_ptr<uint8_t>() + id * (C / 2);
      const at::Half* s = scales->const_data_ptr<at::Half>() + id * G;
      for (int64_t b = 0; b < C / kInt4Block; ++b) {
        const uint8_t* bytes = r + b * (kInt4Block / 2);
        for (int64_t i = 0; i < kInt4Block / 2; ++i) {
          const int64_t lo = b * kInt4Block + i, hi = lo + kInt4Block / 2;
          out[lo] = static_cast<float>((bytes[i] & 0x0F) - 8) * static_cast<float>(s[lo / per]);
          out[hi] = static_cast<float>((bytes[i] >> 4) - 8) * static_cast<float>(s[hi / per]);
        }
      }
    }
  }
}

// A rope table [P, D/2] in float32 (rope_tables' dtype for a float32 model).
void check_table(const at::Tensor& t, int64_t half, const char* name) {
  check_cpu(t, kOp, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, kOp, ": ", name, " must be float32 (rope_tables for the model), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == half, kOp, ": ", name, " must be [max_positions, D/2] = [P, ", half,
                    "] (D = k_cache.size(3)), got ", shape_str(t));
}

// In-features of a weight as decode_linear counts them (int4 packs two per byte).
int64_t in_features(const at::Tensor& w) {
  return w.dim() == 2 ? w.size(1) * (w.scalar_type() == at::kByte ? 2 : 1) : -1;
}

}  // namespace

at::Tensor decode_forward_cpu(const at::Tensor& ids, const at::Tensor& embed_weight,
                              const std::optional<at::Tensor>& embed_scales, const at::Tensor& rope_cos,
                              const at::Tensor& rope_sin, at::TensorList norm1, at::TensorList qkv_weight,
                              const OptList& qkv_scales, const OptList& q_norm, const OptList& k_norm,
                              at::TensorList k_cache, at::TensorList v_cache, const at::Tensor& cache_lens,
                              int64_t num_heads, at::TensorList o_weight, const OptList& o_scales,
                              at::TensorList norm2, at::TensorList gate_up_weight, const OptList& gate_up_scales,
                              at::TensorList down_weight, const OptList& down_scales, const at::Tensor& norm,
                              const at::Tensor& head_weight, const std::optional<at::Tensor>& head_scales,
                              double eps, bool last_only) {
  TORCH_CHECK_VALUE(!k_cache.empty(), kOp, ": needs at least one layer, got empty lists");
  check_cpu(embed_weight, kOp, "embed_weight");
  check_cpu(head_weight, kOp, "head_weight");
  // The hidden size is the embedding's: every other check is against it.
  const int64_t C = in_features(embed_weight);
  TORCH_CHECK_VALUE(C > 0, kOp, ": embed_weight must be 2-D [vocab, C] (int4: uint8 [vocab, C / 2]), got ",
                    shape_str(embed_weight));
  check_decode_weight(embed_weight, embed_scales, C, kOp, "embed_weight", "embed_scales");
  check_decode_weight(head_weight, head_scales, C, kOp, "head_weight", "head_scales");
  check_cpu(norm, kOp, "norm");
  check_float(norm, kOp, "norm");
  TORCH_CHECK_VALUE(norm.dim() == 1 && norm.size(0) == C, kOp, ": norm must be [C] = [", C,
                    "] (embed_weight's width), got ", shape_str(norm));
  const auto tokens = read_ids(ids, embed_weight.size(0));
  const int64_t B = ids.size(0), S = ids.size(1);
  check_kv_caches(k_cache[0], v_cache.empty() ? k_cache[0] : v_cache[0], kOp);
  const int64_t D = k_cache[0].size(3);
  TORCH_CHECK_VALUE(D % 2 == 0, kOp, ": the caches' head dim D = ", D, " must be even (RoPE rotates pairs)");
  check_table(rope_cos, D / 2, "rope_cos");
  check_table(rope_sin, D / 2, "rope_sin");
  TORCH_CHECK_VALUE(rope_sin.size(0) == rope_cos.size(0), kOp, ": rope_sin must have rope_cos's shape ",
                    shape_str(rope_cos), ", got ", shape_str(rope_sin));
  TORCH_CHECK_VALUE(k_cache[0].size(0) == B, kOp, ": the caches hold ", k_cache[0].size(0),
                    " sequences but ids has B = ", B, " rows, got ids ", shape_str(ids));
  // The positions of the new tokens, lens[b] .. lens[b] + S - 1, must be rows of the rope tables.
  check_cpu(cache_lens, kOp, "cache_lens");
  TORCH_CHECK_TYPE(cache_lens.scalar_type() == at::kInt || cache_lens.scalar_type() == at::kLong, kOp,
                   ": cache_lens must be int32 or int64, got ", cache_lens.scalar_type());
  TORCH_CHECK_VALUE(cache_lens.dim() == 1 && cache_lens.size(0) == B, kOp, ": cache_lens must be 1-D [B] = [", B,
                    "], got ", shape_str(cache_lens));
  // cache_lens advances after the caches are written: whatever would stop that is refused first.
  TORCH_CHECK_VALUE(B <= 1 || cache_lens.stride(0) != 0, kOp,
                    ": cache_lens must have one element per sequence, got an expanded tensor (stride 0); pass "
                    "cache_lens.clone()");
  TORCH_CHECK_VALUE(!cache_lens.is_inference() || c10::InferenceMode::is_enabled(), kOp,
                    ": cache_lens is an inference tensor and is advanced in place: call under torch.inference_mode()");
  const at::Tensor lens = cache_lens.to(at::kLong).contiguous();
  const int64_t P = rope_cos.size(0), half = D / 2;
  const int64_t* lp = lens.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(rows_fit(lp[b], S, P), kOp, ": position ", lp[b], " + ", S, " new tokens of sequence ", b,
                      " exceeds the ", P, " positions of the rope tables (the model's max_seq_length)");
  }
  at::Tensor x = at::empty({B, S, C}, embed_weight.options().dtype(at::kFloat));
  at::Tensor cos = at::empty({B, S, half}, rope_cos.options()), sin = at::empty({B, S, half}, rope_sin.options());
  {
    const at::Tensor tc = rope_cos.contiguous(), ts = rope_sin.contiguous(), w = embed_weight.contiguous();
    const std::optional<at::Tensor> ws =
        embed_scales.has_value() ? std::optional<at::Tensor>(embed_scales->contiguous()) : std::nullopt;
    float* xp = x.mutable_data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t s = 0; s < S; ++s) {
        const int64_t r = b * S + s, pos = lp[b] + s;
        embed_row(w, ws, tokens[r], C, xp + r * C);
        std::memcpy(cos.mutable_data_ptr<float>() + r * half, tc.const_data_ptr<float>() + pos * half, half * sizeof(float));
        std::memcpy(sin.mutable_data_ptr<float>() + r * half, ts.const_data_ptr<float>() + pos * half, half * sizeof(float));
      }
    }
  }
  // decode_stack checks every layer (the caches, their rows, the weights against C) before it writes.
  x = decode_stack_cpu(x, norm1, qkv_weight, qkv_scales, q_norm, k_norm, cos, sin, k_cache, v_cache, cache_lens,
                       num_heads, o_weight, o_scales, norm2, gate_up_weight, gate_up_scales, down_weight, down_scales,
                       eps);
  cache_lens.add_(S);
  if (last_only) x = x.narrow(1, S - 1, 1);
  return decode_linear_cpu(std::get<0>(rms_norm_cpu(x, norm, eps)), head_weight, head_scales, std::nullopt);
}

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) { m.impl("decode_forward", &decode_forward_cpu); }

}  // namespace kr
