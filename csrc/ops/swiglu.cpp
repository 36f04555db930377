// SwiGLU: out = silu(gate) * up = gate * sigmoid(gate) * up, element-wise, any shape.
// The backward recomputes sigmoid(gate) (nothing extra is saved):
//   grad_gate = g * up * sig * (1 + gate * (1 - sig)),   grad_up = g * gate * sig.
// fp32 math for bf16/fp16 (double for double); exp through Vectorized::exp_u20 (row_kernels.h,
// shared with decode_linear_swiglu). Every element, tails
// included, goes through the same vector code, so results do not depend on the thread count.
// gate/up may be strided views whose last dim is contiguous (halves of a fused gate_up
// projection) and are then read in place; outputs are contiguous.
#include <ATen/TensorUtils.h>

#include "ops/common.h"
#include "ops/row_kernels.h"

namespace kr {
namespace {

void check_inputs(const at::Tensor& gate, const at::Tensor& up, const char* op) {
  check_cpu(gate, op, "gate");
  check_cpu(up, op, "up");
  check_float(gate, op, "gate");
  check_float(up, op, "up");
  TORCH_CHECK_VALUE(gate.sizes() == up.sizes(), op, ": gate and up must have the same shape, got gate ",
                    shape_str(gate), " and up ", shape_str(up));
  check_same_dtype(gate, "gate", up, "up", op);
}

// A tensor seen as rows of C contiguous elements, row i at data + i * stride. Contiguous
// tensors are one row of numel elements.
struct Rows {
  int64_t n, c, stride;
};

Rows rows_of(at::Tensor& t) {
  const int64_t numel = t.numel();
  if (t.is_contiguous() || numel == 0) {
    t = t.contiguous();
    return {1, numel, numel};
  }
  const int64_t C = t.size(-1);
  if (t.stride(-1) == 1 && C > 1) {
    const std::vector<int64_t> shape{numel / C, C};
    auto st = at::detail::computeStride(t.sizes(), t.strides(), shape);
    if (st && (*st)[1] == 1) return {numel / C, C, (*st)[0]};
  }
  t = t.contiguous();
  return {1, numel, numel};
}

template <typename T>
void backward_run(const T* go, const T* g, const T* u, T* gg, T* gu, int64_t n) {
  using IO = VecIO<T>;
  using V = typename IO::V;
  constexpr int64_t K = IO::kSize;
  const V one(1);
  auto step = [&](int64_t j, int64_t m) {
    const bool full = m == K;
    const V gv = full ? IO::load(g + j) : IO::load(g + j, m);
    const V uv = full ? IO::load(u + j) : IO::load(u + j, m);
    const V ov = full ? IO::load(go + j) : IO::load(go + j, m);
    const V sig = sigmoid_of(gv);
    const V dgate = ov * uv * sig * at::vec::fmadd(gv, one - sig, one);
    const V dup = ov * gv * sig;
    if (full) {
      IO::store(gg + j, dgate);
      IO::store(gu + j, dup);
    } else {
      IO::store(gg + j, dgate, m);
      IO::store(gu + j, dup, m);
    }
  };
  int64_t i = 0;
  for (; i + K <= n; i += K) step(i, K);
  if (i < n) step(i, n - i);
}

// Calls fn(row_offset_a, row_offset_b, out_offset, count) over all elements in parallel:
// by runs of whole vectors for single-row (contiguous) inputs, by rows otherwise.
template <typename Fn>
void for_each_run(const Rows& a, const Rows& b, int64_t K, const Fn& fn) {
  if (a.n == 1 && b.n == 1) {
    const int64_t n = a.c, units = (n + K - 1) / K;
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / K);
    at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
      const int64_t i0 = u0 * K, i1 = std::min(n, u1 * K);
      fn(i0, i0, i0, i1 - i0);
    });
    return;
  }
  const int64_t C = a.c;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / C);
  at::parallel_for(0, a.n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r * a.stride, r * b.stride, r * C, C);
  });
}

// Both inputs as rows of the same width (a contiguous one re-seen as rows of the other's width).
void align_rows(Rows& a, Rows& b) {
  if (a.n == b.n) return;
  Rows& flat = a.n == 1 ? a : b;
  const Rows& other = a.n == 1 ? b : a;
  flat = {other.n, other.c, other.c};
}

at::Tensor swiglu_cpu(const at::Tensor& gate_, const at::Tensor& up_) {
  check_inputs(gate_, up_, "swiglu");
  at::Tensor gate = gate_, upt = up_;
  Rows rg = rows_of(gate), ru = rows_of(upt);
  align_rows(rg, ru);
  at::Tensor out = at::empty(gate_.sizes(), gate_.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate.scalar_type(), "swiglu_cpu", [&] {
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    const scalar_t* upp = upt.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_each_run(rg, ru, VecIO<scalar_t>::kSize, [&](int64_t ig, int64_t iu, int64_t io, int64_t n) {
      swiglu_row<scalar_t>(gp + ig, upp + iu, op + io, n);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& grad_out_,
                                                       const at::Tensor& gate_,
                                                       const at::Tensor& up_) {
  check_inputs(gate_, up_, "swiglu_backward");
  check_cpu(grad_out_, "swiglu_backward", "grad_out");
  TORCH_CHECK_VALUE(grad_out_.sizes() == gate_.sizes(), "swiglu_backward: grad_out must match gate ",
                    shape_str(gate_), ", got ", shape_str(grad_out_));
  check_same_dtype(grad_out_, "grad_out", gate_, "gate", "swiglu_backward");
  at::Tensor gate = gate_, upt = up_;
  Rows rg = rows_of(gate), ru = rows_of(upt);
  align_rows(rg, ru);
  // grad_out is read in the layout of the output: contiguous rows of C.
  const at::Tensor go = grad_out_.contiguous();
  const auto opts = gate_.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor gg = at::empty(gate_.sizes(), opts), gu = at::empty(gate_.sizes(), opts);
  if (gg.numel() == 0) return {gg, gu};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate.scalar_type(), "swiglu_backward_cpu", [&] {
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    const scalar_t* upp = upt.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    scalar_t* ggp = gg.mutable_data_ptr<scalar_t>();
    scalar_t* gup = gu.mutable_data_ptr<scalar_t>();
    for_each_run(rg, ru, VecIO<scalar_t>::kSize, [&](int64_t ig, int64_t iu, int64_t io, int64_t n) {
      backward_run<scalar_t>(gop + io, gp + ig, upp + iu, ggp + io, gup + io, n);
    });
  });
  return {gg, gu};
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("swiglu", &swiglu_cpu);
  m.impl("swiglu_backward", &swiglu_backward_cpu);
}

}  // namespace kr
