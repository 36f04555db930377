// Rotary position embedding (RoPE), rotate-half convention of HF Llama/Qwen3:
//   out[..., :D/2] = x1 * cos - x2 * sin,   out[..., D/2:] = x2 * cos + x1 * sin
// on x [B, T, H, D] with cos/sin [T, D/2] (shared by the batch) or [B, T, D/2] (per-sequence
// positions). One read and one write of x; the tables are converted once to the accumulation
// type (fp32 for bf16/fp16 x, so fp32 tables lose nothing). x may be a strided view (q/k split
// from a fused projection) as long as its last dim is contiguous; the output is contiguous.
// The backward is the inverse rotation (the same kernel with -sin); the tables get no gradient.
#include "ops/common.h"
#include "ops/cpu_kernels.h"
#include "ops/row_kernels.h"

namespace kr {

// Declared in ops/cpu_kernels.h. Checks x and the tables; names the op (rotary or rotary_backward) and x's role in messages.
void check_rotary_inputs(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                         const char* op, const char* xname) {
  check_cpu(x, op, xname);
  check_cpu(cos, op, "cos");
  check_cpu(sin, op, "sin");
  check_float(x, op, xname);
  check_float(cos, op, "cos");
  check_float(sin, op, "sin");
  check_dim(x, 4, op, xname, "[B, T, H, D]");
  const int64_t B = x.size(0), T = x.size(1), D = x.size(3);
  TORCH_CHECK_VALUE(D % 2 == 0, op, ": ", xname, " [B, T, H, D] must have an even head_dim D, got shape ",
                    shape_str(x));
  TORCH_CHECK_VALUE(cos.sizes() == sin.sizes(), op, ": cos and sin must have the same shape, got cos ",
                    shape_str(cos), " and sin ", shape_str(sin));
  const bool ok2 = cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D / 2;
  const bool ok3 = cos.dim() == 3 && cos.size(0) == B && cos.size(1) == T && cos.size(2) == D / 2;
  TORCH_CHECK_VALUE(ok2 || ok3, op, ": cos/sin must be [T, D/2] = [", T, ", ", D / 2,
                    "] or [B, T, D/2] = [", B, ", ", T, ", ", D / 2, "] for ", xname, " ",
                    shape_str(x), ", got ", shape_str(cos));
  check_same_dtype(cos, "cos", sin, "sin", op);
  TORCH_CHECK_TYPE(cos.scalar_type() == x.scalar_type() || cos.scalar_type() == at::kFloat, op,
                   ": cos/sin must be float32 or ", xname, "'s dtype (", x.scalar_type(), "), got ",
                   cos.scalar_type());
}

namespace {

// Rotates rows [r0, r1) of the B*T rows of x (each H heads of D) into out (contiguous).
template <typename T>
void rotate_rows(const T* x, int64_t sB, int64_t sT, int64_t sH, T* out, const acc_t<T>* cos,
                 const acc_t<T>* sin, int64_t r0, int64_t r1, int64_t Tn, int64_t H, int64_t D,
                 bool per_batch) {
  const int64_t half = D / 2;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / Tn, t = r % Tn;
    const acc_t<T>* c = cos + (per_batch ? r : t) * half;
    const acc_t<T>* s = sin + (per_batch ? r : t) * half;
    const T* xr = x + b * sB + t * sT;
    T* orow = out + r * H * D;
    for (int64_t h = 0; h < H; ++h) rotate_head<T>(xr + h * sH, orow + h * D, c, s, D);
  }
}

// out = rotation of x by (cos, sin); tables already checked.
at::Tensor rotate(const at::Tensor& x_, const at::Tensor& cos_, const at::Tensor& sin_) {
  // Strided views are read in place when the last dim is contiguous; anything else is copied.
  const at::Tensor x = x_.stride(3) == 1 ? x_ : x_.contiguous();
  const int64_t B = x.size(0), Tn = x.size(1), H = x.size(2), D = x.size(3);
  at::Tensor out = at::empty({B, Tn, H, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto acc = at::toOpMathType(x.scalar_type());
  const at::Tensor cos = cos_.to(acc).contiguous();
  const at::Tensor sin = sin_.to(acc).contiguous();
  const bool per_batch = cos.dim() == 3;
  const int64_t sB = x.stride(0), sT = x.stride(1), sH = x.stride(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    const A* cp = cos.const_data_ptr<A>();
    const A* sp = sin.const_data_ptr<A>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (H * D));
    at::parallel_for(0, B * Tn, grain, [&](int64_t r0, int64_t r1) {
      rotate_rows<scalar_t>(xp, sB, sT, sH, outp, cp, sp, r0, r1, Tn, H, D, per_batch);
    });
  });
  return out;
}

}  // namespace

// Declared in ops/cpu_kernels.h: other ops call it without a dispatcher round trip.
at::Tensor rotary_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_inputs(x, cos, sin, "rotary", "x");
  return rotate(x, cos, sin);
}

namespace {


// The inverse rotation: grad_x1 = g1 * cos + g2 * sin, grad_x2 = g2 * cos - g1 * sin.
at::Tensor rotary_backward_cpu(const at::Tensor& grad_out, const at::Tensor& cos,
                               const at::Tensor& sin) {
  check_rotary_inputs(grad_out, cos, sin, "rotary_backward", "grad_out");
  return rotate(grad_out, cos, sin.to(at::toOpMathType(grad_out.scalar_type())).neg());
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("rotary", &rotary_cpu);
  m.impl("rotary_backward", &rotary_backward_cpu);
}

}  // namespace kr
