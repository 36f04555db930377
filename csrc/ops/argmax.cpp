// argmax over the last dim, as torch.argmax(x, -1) answers it: the first index of the largest
// value, a NaN counting as larger than any number (the first NaN wins), int64 indices.
//
// Greedy decoding takes the argmax of a vocabulary of logits every step; ATen's CPU kernel
// compares one element at a time (30 us for 32,000 logits on a Zen 4, 1% of an int8
// model_small step), where a vector max and a vector search for its first copy take two passes
// over memory that the LM head has just written.
#include "ops/common.h"

#include <cmath>
#include <limits>

namespace kr {
namespace {

constexpr const char* kOp = "argmax";

// Index of the first largest value of x[0..n) (n >= 1), NaN largest.
template <typename T>
int64_t row_argmax(const T* x, int64_t n) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  using IO = VecIO<T>;
  constexpr int64_t K = V::size();
  // Pass 1: the max, NaN-propagating (at::vec::maximum returns NaN if either lane is NaN).
  V m(-std::numeric_limits<A>::infinity());
  int64_t i = 0;
  for (; i + K <= n; i += K) m = at::vec::maximum(m, IO::load(x + i));
  A best = at::vec::vec_reduce_all<A>([](V& a, V& b) { return at::vec::maximum(a, b); }, m);
  for (; i < n; ++i) {
    const A v = A(x[i]);
    if (std::isnan(v) || v > best) best = v;
  }
  if (std::isnan(best)) {  // a model that failed: the first NaN, as torch answers
    for (int64_t j = 0; j < n; ++j)
      if (std::isnan(A(x[j]))) return j;
  }
  // Pass 2: the first lane equal to it, a vector compare at a time (-0.0 == 0.0, as torch's >).
  const V vb(best);
  i = 0;
  for (; i + K <= n; i += K) {
    const V eq = IO::load(x + i) == vb;  // all bits set where equal
    const int differ = eq.zero_mask();   // a bit per lane that is not
    if (differ != (1 << K) - 1) return i + __builtin_ctz(~differ);
  }
  for (; i < n; ++i)
    if (A(x[i]) == best) return i;
  TORCH_INTERNAL_ASSERT(false, kOp, ": no element equals the row's max");
  return 0;
}

at::Tensor argmax_cpu(const at::Tensor& x) {
  check_cpu(x, kOp, "x");
  check_float(x, kOp, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) > 0, kOp,
                    ": x must have at least one dim and a non-empty last dim (the values to pick from), got ",
                    shape_str(x));
  const int64_t n = x.size(-1);
  const at::Tensor c = x.contiguous();
  const int64_t rows = c.numel() / n;
  at::Tensor out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kLong));
  int64_t* o = out.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, c.scalar_type(), "argmax_cpu", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / n);
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) o[r] = row_argmax<scalar_t>(p + r * n, n);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) { m.impl("argmax", &argmax_cpu); }

}  // namespace kr
