// The per-row bodies of rms_norm, rotary and swiglu. Their ops run them over whole tensors;
// decode_attention_step runs the first two head by head inside its own loop, decode_linear_swiglu
// the last on its gate/up dot products. Written once, so the fused kernels compute the same bits
// as the separate ops.
#pragma once

#include "ops/common.h"

#include <cmath>
#include <type_traits>

namespace kr {

// yr = xr * rstd * w over C values; returns rstd = 1 / sqrt(mean(xr^2) + eps).
template <typename T>
inline acc_t<T> rms_norm_row(const T* xr, const acc_t<T>* w, T* yr, int64_t C, double eps) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  using V = typename IO::V;
  constexpr int64_t K = IO::kSize;
  V acc(0);
  int64_t i = 0;
  for (; i + K <= C; i += K) {
    V v = IO::load(xr + i);
    acc = at::vec::fmadd(v, v, acc);
  }
  A ss = at::vec::vec_reduce_all<A>([](V& a, V& b) { return a + b; }, acc);
  for (; i < C; ++i) ss += A(xr[i]) * A(xr[i]);
  const A rs = A(1) / std::sqrt(ss / A(C) + A(eps));
  const V vrs(rs);
  i = 0;
  for (; i + K <= C; i += K) IO::store(yr + i, IO::load(xr + i) * vrs * V::loadu(w + i));
  if (i < C) IO::store(yr + i, IO::load(xr + i, C - i) * vrs * V::loadu(w + i, C - i), C - i);
  return rs;
}

// One head of RoPE, rotate-half convention: op[:D/2] = x1 cos - x2 sin, op[D/2:] = x2 cos + x1 sin,
// with the position's tables c, s [D/2] in the accumulation type.
template <typename T>
inline void rotate_head(const T* xp, T* op, const acc_t<T>* c, const acc_t<T>* s, int64_t D) {
  using IO = VecIO<T>;
  using V = typename IO::V;
  constexpr int64_t K = IO::kSize;
  const int64_t half = D / 2;
  int64_t i = 0;
  for (; i + K <= half; i += K) {
    const V cv = V::loadu(c + i), sv = V::loadu(s + i);
    const V x1 = IO::load(xp + i), x2 = IO::load(xp + half + i);
    IO::store(op + i, at::vec::fmsub(x1, cv, x2 * sv));
    IO::store(op + half + i, at::vec::fmadd(x2, cv, x1 * sv));
  }
  if (i < half) {  // the same vector arithmetic on a masked tail (D/2 not a multiple of K)
    const int64_t n = half - i;
    const V cv = V::loadu(c + i, n), sv = V::loadu(s + i, n);
    const V x1 = IO::load(xp + i, n), x2 = IO::load(xp + half + i, n);
    IO::store(op + i, at::vec::fmsub(x1, cv, x2 * sv), n);
    IO::store(op + half + i, at::vec::fmadd(x2, cv, x1 * sv), n);
  }
}

// sigmoid(g) through exp_u20 (about 20 ulp in fp32, far inside the fp32 tolerance; double uses
// the full-precision exp).
template <typename V>
inline V sigmoid_of(const V& g) {
  const V one(1);
  return one / (one + g.neg().exp_u20());
}

// out = silu(g) * up = g * sigmoid(g) * up over n values, read as I, computed in I's accumulation
// type and stored as O (I itself, or fp32 dot products stored as the activations' type). The tail
// goes through the same vector code, masked.
template <typename I, typename O = I>
inline void swiglu_row(const I* g, const I* u, O* out, int64_t n) {
  static_assert(std::is_same_v<acc_t<I>, acc_t<O>>, "swiglu_row stores in a type of the same accumulation type");
  using IN = VecIO<I>;
  using OUT = VecIO<O>;
  using V = typename IN::V;
  constexpr int64_t K = IN::kSize;
  int64_t i = 0;
  for (; i + K <= n; i += K) {
    const V gv = IN::load(g + i);
    OUT::store(out + i, gv * sigmoid_of(gv) * IN::load(u + i));
  }
  if (i < n) {
    const V gv = IN::load(g + i, n - i);
    OUT::store(out + i, gv * sigmoid_of(gv) * IN::load(u + i, n - i), n - i);
  }
}

}  // namespace kr
