// RMSNorm: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps), over the last dim.
// One pass per row for the forward; the backward fuses grad_x with the per-row
// reduction it needs and accumulates grad_weight in fixed row blocks (deterministic).
#include "ops/common.h"
#include "ops/cpu_kernels.h"
#include "ops/row_kernels.h"

namespace kr {
namespace {

constexpr const char* kOp = "rms_norm";

void check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  check_cpu(x, kOp, "x");
  check_cpu(weight, kOp, "weight");
  check_float(x, kOp, "x");
  check_float(weight, kOp, "weight");
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp,
                    ": x must have at least 1 dim [..., C], got a scalar");
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == x.size(-1), kOp,
                    ": weight must be [C] = [", x.size(-1), "] to match x ", shape_str(x),
                    ", got ", shape_str(weight));
}

template <typename T>
void forward_rows(const T* x, const acc_t<T>* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t C,
                  double eps) {
  for (int64_t r = 0; r < rows; ++r) rstd[r] = rms_norm_row<T>(x + r * C, w, y + r * C, C, eps);
}

// grad_x for the given rows, and sum over these rows of grad_y * x * rstd into dw.
template <typename T>
void backward_rows(const T* gy, const T* x, const acc_t<T>* w, const acc_t<T>* rstd, T* gx,
                   acc_t<T>* dw, int64_t rows, int64_t C) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  using V = typename IO::V;
  constexpr int64_t K = IO::kSize;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = gy + r * C;
    const T* xr = x + r * C;
    T* gxr = gx + r * C;
    const A rs = rstd[r];
    // dot = sum(g * w * x)
    V acc(0);
    int64_t i = 0;
    for (; i + K <= C; i += K)
      acc = at::vec::fmadd(IO::load(gr + i) * V::loadu(w + i), IO::load(xr + i), acc);
    A dot = at::vec::vec_reduce_all<A>([](V& a, V& b) { return a + b; }, acc);
    for (; i < C; ++i) dot += A(gr[i]) * w[i] * A(xr[i]);
    // grad_x = rstd * g * w - rstd^3 / C * dot * x
    const V vrs(rs);
    const V vc(rs * rs * rs * dot / A(C));
    const V vr(rs);
    auto step = [&](int64_t j, int64_t n) {
      V g = n == K ? IO::load(gr + j) : IO::load(gr + j, n);
      V xv = n == K ? IO::load(xr + j) : IO::load(xr + j, n);
      V wv = n == K ? V::loadu(w + j) : V::loadu(w + j, n);
      V out = vrs * g * wv - vc * xv;
      V d = (n == K ? V::loadu(dw + j) : V::loadu(dw + j, n)) + g * xv * vr;
      if (n == K) {
        IO::store(gxr + j, out);
        d.store(dw + j);
      } else {
        IO::store(gxr + j, out, n);
        d.store(dw + j, n);
      }
    };
    i = 0;
    for (; i + K <= C; i += K) step(i, K);
    if (i < C) step(i, C - i);
  }
}

}  // namespace

// Declared in ops/cpu_kernels.h: other ops call it without a dispatcher round trip.
std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x_, const at::Tensor& weight,
                                                double eps) {
  check_inputs(x_, weight);
  TORCH_CHECK_VALUE(eps >= 0, kOp, ": eps must be >= 0, got ", eps);
  const at::Tensor x = x_.contiguous();
  const int64_t C = x.size(-1);
  const int64_t N = C == 0 ? 0 : x.numel() / C;
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  const at::Tensor w = weight.to(acc_dtype).contiguous();
  at::Tensor y = at::empty_like(x);
  auto rshape = x.sizes().vec();
  rshape.pop_back();
  at::Tensor rstd = at::empty(rshape, x.options().dtype(acc_dtype));
  if (N == 0) return {y, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const A* wp = w.const_data_ptr<A>();
    A* rp = rstd.mutable_data_ptr<A>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(C, 1));
    at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) {
      forward_rows<scalar_t>(xp + b * C, wp, yp + b * C, rp + b, e - b, C, eps);
    });
  });
  return {y, rstd};
}

namespace {


std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y_,
                                                         const at::Tensor& x_,
                                                         const at::Tensor& weight,
                                                         const at::Tensor& rstd_) {
  check_inputs(x_, weight);
  TORCH_CHECK_VALUE(grad_y_.sizes() == x_.sizes(), kOp, "_backward: grad_y must match x ",
                    shape_str(x_), ", got ", shape_str(grad_y_));
  check_same_dtype(grad_y_, "grad_y", x_, "x", "rms_norm_backward");
  const auto acc_dtype = at::toOpMathType(x_.scalar_type());
  const at::Tensor x = x_.contiguous();
  const at::Tensor gy = grad_y_.contiguous();
  const int64_t C = x.size(-1);
  const int64_t N = C == 0 ? 0 : x.numel() / C;
  TORCH_CHECK_VALUE(rstd_.numel() == N && rstd_.scalar_type() == acc_dtype, kOp,
                    "_backward: rstd must be the [", N, "] ", acc_dtype,
                    " tensor saved by the forward, got ", shape_str(rstd_), " ",
                    rstd_.scalar_type());
  const at::Tensor rstd = rstd_.contiguous();
  const at::Tensor w = weight.to(acc_dtype).contiguous();
  at::Tensor gx = at::empty_like(x);
  if (N == 0) return {gx, at::zeros_like(weight)};
  const int64_t blocks = fixed_block_count(N);
  at::Tensor partial = at::zeros({blocks, C}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gy.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const A* wp = w.const_data_ptr<A>();
    const A* rp = rstd.const_data_ptr<A>();
    A* pp = partial.mutable_data_ptr<A>();
    at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t r0 = blk * N / blocks, r1 = (blk + 1) * N / blocks;
        backward_rows<scalar_t>(gp + r0 * C, xp + r0 * C, wp, rp + r0, gxp + r0 * C, pp + blk * C,
                                r1 - r0, C);
      }
    });
  });
  // Sum the block partials in a fixed order, whatever the thread count.
  at::Tensor gw = partial[0].clone();
  for (int64_t blk = 1; blk < blocks; ++blk) gw.add_(partial[blk]);
  return {gx, gw.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("rms_norm_backward", &rms_norm_backward_cpu);
}

}  // namespace kr
