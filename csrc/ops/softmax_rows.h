// The row passes of a softmax, in the accumulation type: the max of a row, exp(x - max) with
// its sum, and the log-sum-exp. One implementation for attention (online softmax over KV
// tiles), decode_attention (the same over the KV cache) and linear_cross_entropy (a row of
// logits).
#pragma once

#include "ops/common.h"

#include <cmath>
#include <limits>

namespace kr {

// exp in lanes: exp_u20 for float (<= 20 ulp, ~1e-6 relative, at a fraction of exp()'s cost),
// the full-precision exp for double (the float64 references and gradcheck).
template <typename A>
inline Vectorized<A> vexp(const Vectorized<A>& x) {
  if constexpr (std::is_same_v<A, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// max(x[i] * scale) for i < n (n >= 1). clamp_min is a bare SIMD max: at::vec::maximum's NaN
// propagation costs three more instructions per vector in the hottest loop of attention, and
// a NaN still reaches the result through row_exp_sum.
// x may also be in a 16-bit type X (read as A): the bf16 logits of a bf16 GEMM.
template <typename X, typename A = acc_t<X>>
inline A row_max(const X* x, int64_t n, A scale = A(1)) {
  using V = Vectorized<A>;
  using IO = VecIO<X>;
  constexpr int64_t K = V::size();
  const V vs(scale);
  V m(-std::numeric_limits<A>::infinity());
  int64_t i = 0;
  for (; i + K <= n; i += K) m = at::vec::clamp_min(IO::load(x + i) * vs, m);
  if (i < n) m = at::vec::clamp_min(V::set(m, IO::load(x + i, n - i) * vs, n - i), m);
  return at::vec::vec_reduce_all<A>([](V& a, V& b) { return at::vec::maximum(a, b); }, m);
}

// e[i] = exp(x[i] * scale - sub) for i < n; returns sum(e) in A. With out != nullptr the
// values are also stored there as T (out may alias x when T == A) and out[n .. n_pad) is
// zeroed. The tail is vectorised too, with the unused lanes masked out of the sum.
// x is in A or in a 16-bit type accumulating in A (out may alias x when they are the same type).
template <typename T, typename A = acc_t<T>, typename X>
inline A row_exp_sum(const X* x, int64_t n, A scale, A sub, T* out = nullptr, int64_t n_pad = 0) {
  static_assert(std::is_same_v<acc_t<X>, A>, "row_exp_sum reads A or a type that accumulates in A");
  using IO = VecIO<T>;
  using XIO = VecIO<X>;
  using V = Vectorized<A>;
  constexpr int64_t K = V::size();
  const V vs(scale), vsub(sub);
  V acc(0);
  int64_t i = 0;
  for (; i + K <= n; i += K) {
    const V e = vexp<A>(at::vec::fmsub(XIO::load(x + i), vs, vsub));
    acc = acc + e;
    if (out != nullptr) IO::store(out + i, e);
  }
  if (i < n) {
    const V e = V::set(V(0), vexp<A>(at::vec::fmsub(XIO::load(x + i, n - i), vs, vsub)), n - i);
    acc = acc + e;
    if (out != nullptr) IO::store(out + i, e, n - i);
    i = n;
  }
  if (out != nullptr && i < n_pad) std::fill(out + i, out + n_pad, T(0));
  return at::vec::vec_reduce_all<A>([](V& a, V& b) { return a + b; }, acc);
}

// log(sum(exp(x[i]))) for i < n (n >= 1), max-shifted. A row whose max is infinite (all -inf,
// or an inf entry) gives that infinity.
template <typename X, typename A = acc_t<X>>
inline A row_logsumexp(const X* x, int64_t n) {
  const A mx = row_max<X>(x, n);
  if (std::isinf(mx)) return mx;
  return mx + std::log(row_exp_sum<X, A>(x, n, A(1), mx));
}

}  // namespace kr
