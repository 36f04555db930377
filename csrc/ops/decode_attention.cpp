// The KV-cache step of generation.
//
// kv_cache_append writes k_new/v_new [B, S, Hkv, D] into rows cache_lens[b] .. cache_lens[b]+S-1
// of k_cache/v_cache [B, Tmax, Hkv, D] (in place; cache_lens is not changed).
//
// A cache is [B, Tmax, Hkv, D] in one of two memory layouts (CacheStrides): contiguous, or
// head-major, the [B, Hkv, Tmax, D] storage KVCache allocates, seen through permute(0, 2, 1, 3).
// Head-major keeps each head's rows side by side, so a work item of one KV head reads one
// contiguous stream that the hardware prefetchers follow; in the contiguous layout it reads D of
// every Hkv * D values, and with the weights streaming between the layers that strided read ran
// at 8.6 GB/s against 13.6 for the same bytes head-major (model_small's caches, 2 threads, Zen 4).
//
// decode_attention: q [B, S, Hq, D] are the newest S tokens, the last S of the cache_lens[b]
// valid cache rows of sequence b; query s attends causally to rows 0 .. cache_lens[b]-S+s.
//
// Work item = (sequence b, KV head g, query-row block, KV range). All Hq/Hkv query heads and
// all S rows of a group are processed together ("query rows" r = s*G + j, head g*G + j), so
// each K/V row is read once per group and converted to the accumulation type once. At small
// S*G the KV length is split into fixed ranges of about kSplitLen rows (a split that depends
// only on the length, never on the thread count); each range leaves a partial (max, sum, acc)
// and a second pass combines them in a fixed order, so 1 or N threads give the same bits.
// Inside an item, KV rows go by sub-blocks of kKvBlock with an online softmax.
//
// decode_attention_step is a block's whole attention between its q/k/v and o projections in
// one call: split qkv, per-head RMSNorm of q and k (qk_norm), RoPE, append k/v to the cache in
// its dtype, attention. The same kernels as the separate ops, called as C++ functions: one
// dispatch per block instead of about ten, which is most of a small model's decode step.
#include "ops/common.h"
#include "ops/cpu_kernels.h"
#include "ops/row_kernels.h"
#include "ops/softmax_rows.h"

#include <ATen/MemoryOverlap.h>

#include <cmath>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <type_traits>
#include <vector>

namespace kr {
namespace {

constexpr const char* kDec = "decode_attention";
constexpr const char* kApp = "kv_cache_append";
constexpr const char* kStep = "decode_attention_step";

constexpr int64_t kRowBlock = 32;   // query rows (S * Hq/Hkv) processed against one K/V pass
constexpr int64_t kKvBlock = 128;   // KV rows per softmax sub-block (the scores buffer)
constexpr int64_t kSplitLen = 512;  // KV rows per split range when the query rows fit one block
constexpr int64_t kPrefetchAhead = 16;  // K rows the scores loop asks for ahead of use

// ---------------------------------------------------------------------------------------------
// Argument checks

// Whether c [B, Tmax, Hkv, D] has the strides of the layout whose dims, outermost first, are
// `order` (dims of size 1 may have any stride, and an empty tensor any strides, as in
// is_contiguous; for a non-empty one the running product stays <= numel, so cannot overflow).
bool dense_in_order(const at::Tensor& c, std::initializer_list<int64_t> order) {
  if (c.numel() == 0) return true;
  int64_t expected = 1;
  for (auto it = std::rbegin(order); it != std::rend(order); ++it) {
    if (c.size(*it) != 1 && c.stride(*it) != expected) return false;
    expected *= c.size(*it);
  }
  return true;
}

void check_cache(const at::Tensor& c, const char* op, const char* name) {
  check_cpu(c, op, name);
  check_float(c, op, name);
  check_dim(c, 4, op, name, "[B, Tmax, Hkv, D]");
  TORCH_CHECK_VALUE(dense_in_order(c, {0, 1, 2, 3}) || dense_in_order(c, {0, 2, 1, 3}), op, ": ", name,
                    " must be a [B, Tmax, Hkv, D] tensor laid out contiguous or head-major (a contiguous "
                    "[B, Hkv, Tmax, D] tensor .permute(0, 2, 1, 3), as KVCache makes it; the cache is written "
                    "in place), got shape ", shape_str(c), " with strides ", c.strides());
}

void check_caches(const at::Tensor& k_cache, const at::Tensor& v_cache, const char* op) {
  check_cache(k_cache, op, "k_cache");
  check_cache(v_cache, op, "v_cache");
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), op,
                    ": v_cache must have the shape of k_cache [B, Tmax, Hkv, D] = ",
                    shape_str(k_cache), ", got ", shape_str(v_cache));
  check_same_dtype(v_cache, "v_cache", k_cache, "k_cache", op);
  // The kernels take both caches' strides from k_cache: they must agree wherever a dim has more
  // than one index (a size-1 dim's stride is never used).
  bool same_layout = true;
  for (int64_t d = 0; d < 4; ++d) same_layout &= k_cache.size(d) <= 1 || v_cache.stride(d) == k_cache.stride(d);
  TORCH_CHECK_VALUE(same_layout, op, ": v_cache must have the memory layout of k_cache (strides ",
                    k_cache.strides(), "), got strides ", v_cache.strides());
  TORCH_CHECK_VALUE(k_cache.size(2) > 0, op, ": k_cache must have at least one KV head, got ",
                    shape_str(k_cache));
}

std::vector<int64_t> read_lens(const at::Tensor& cache_lens, const char* op, int64_t B) {
  check_cpu(cache_lens, op, "cache_lens");
  const auto st = cache_lens.scalar_type();
  TORCH_CHECK_TYPE(st == at::kInt || st == at::kLong, op,
                   ": cache_lens must be int32 or int64, got ", st);
  TORCH_CHECK_VALUE(cache_lens.dim() == 1 && cache_lens.size(0) == B, op,
                    ": cache_lens must be 1-D [B] = [", B, "], got ", shape_str(cache_lens));
  std::vector<int64_t> lens(B);
  const at::Tensor c = cache_lens.contiguous();
  if (st == at::kInt) {
    const int32_t* p = c.const_data_ptr<int32_t>();
    for (int64_t b = 0; b < B; ++b) lens[b] = p[b];
  } else {
    const int64_t* p = c.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) lens[b] = p[b];
  }
  return lens;
}

// Element strides of a checked cache [B, Tmax, Hkv, D] (D is always 1 apart): sequence, row, head.
struct CacheStrides {
  int64_t b, t, h;
  explicit CacheStrides(const at::Tensor& c) : b(c.stride(0)), t(c.stride(1)), h(c.stride(2)) {}
  int64_t at(int64_t seq, int64_t row, int64_t head) const { return seq * b + row * t + head * h; }
};

// ---------------------------------------------------------------------------------------------
// Vector helpers in the accumulation type A

template <typename A>
inline A dot(const A* a, const A* b, int64_t n) {
  using V = Vectorized<A>;
  constexpr int64_t K = V::size();
  V s0(0), s1(0);
  int64_t i = 0;
  for (; i + 2 * K <= n; i += 2 * K) {
    s0 = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), s0);
    s1 = at::vec::fmadd(V::loadu(a + i + K), V::loadu(b + i + K), s1);
  }
  for (; i + K <= n; i += K) s0 = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), s0);
  A s = at::vec::vec_reduce_all<A>([](V& x, V& y) { return x + y; }, s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += alpha * x
template <typename A>
inline void axpy(A alpha, const A* x, A* y, int64_t n) {
  using V = Vectorized<A>;
  constexpr int64_t K = V::size();
  const V va(alpha);
  int64_t i = 0;
  for (; i + K <= n; i += K) at::vec::fmadd(va, V::loadu(x + i), V::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

template <typename A>
inline void scale_inplace(A alpha, A* y, int64_t n) {
  using V = Vectorized<A>;
  constexpr int64_t K = V::size();
  const V va(alpha);
  int64_t i = 0;
  for (; i + K <= n; i += K) (va * V::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] *= alpha;
}

// Converts one row of T into A (a no-op pointer pass-through when T == A).
template <typename T>
inline const acc_t<T>* as_acc(const T* src, acc_t<T>* buf, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return src;
  } else {
    using IO = VecIO<T>;
    constexpr int64_t K = IO::kSize;
    int64_t i = 0;
    for (; i + K <= n; i += K) IO::load(src + i).store(buf + i);
    for (; i < n; ++i) buf[i] = acc_t<T>(src[i]);
    return buf;
  }
}

// ---------------------------------------------------------------------------------------------
// decode_attention

template <typename T>
struct Problem {
  using A = acc_t<T>;
  const T* q;
  const T* k;
  const T* v;
  CacheStrides cs;  // of k and v alike
  int64_t S, Hq, Hkv, G, D;
  A scale;
};

struct Item {
  int64_t b, g, r0, r1, t0, t1;
  int64_t part;  // index of its partial slot, -1 when the item writes the output directly
};

// Per-thread scratch.
template <typename A>
struct Scratch {
  std::vector<A> q, sc, kv, acc, m, l;
  explicit Scratch(int64_t D)
      : q(kRowBlock * D), sc(kRowBlock * kKvBlock), kv(4 * D), acc(kRowBlock * D), m(kRowBlock),
        l(kRowBlock) {}
};

// Asks for rows t .. t+3 of one head (D values each, `stride` apart) ahead of use. At decode the
// cache comes from DRAM (streaming the weights evicted it); in the contiguous layout a head's rows
// are 1/Hkv of the memory a pass covers, a strided stream the hardware prefetchers pick up late.
template <typename T>
inline void prefetch_rows(const T* base, int64_t stride, int64_t t, int64_t D) {
  for (int j = 0; j < 4; ++j) {
    const char* row = reinterpret_cast<const char*>(base + (t + j) * stride);
    for (int64_t o = 0; o < D * static_cast<int64_t>(sizeof(T)); o += 64) __builtin_prefetch(row + o);
  }
}

// [sum(a), sum(b), sum(c), sum(d)] of four float vectors in one transposing reduction: about a
// quarter of the shuffles of four horizontal sums, which dominated the scores of a few query rows.
#if defined(__AVX2__)
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
#endif
#if defined(__AVX512F__)
inline __m256 halves_sum(__m512 x) {
  return _mm256_add_ps(_mm512_castps512_ps256(x),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  return hsum4(halves_sum(a), halves_sum(b), halves_sum(c), halves_sum(d));
}
#endif

// Whether Vectorized<A> of this build has a hsum4 above.
template <typename A>
constexpr bool kHasHsum4 =
#if defined(__AVX512F__)
    std::is_same_v<A, float> && Vectorized<A>::size() == 16;
#elif defined(__AVX2__)
    std::is_same_v<A, float> && Vectorized<A>::size() == 8;
#else
    false;
#endif

// scores4 for NR (at most 3) consecutive query rows q [NR][D] into sc [NR][ldsc]: 4 x NR
// accumulators and NR query vectors stay in registers while each K vector is converted once.
template <typename T, int NV, int NR>
inline void scores4_few(const T* k0, int64_t kstride, const float* q, float* sc, int64_t ldsc) {
  if constexpr (kHasHsum4<acc_t<T>>) {
    using IO = VecIO<T>;
    using V = Vectorized<float>;
    constexpr int64_t K = V::size(), D = NV * K;
    V s[NR][4];
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < 4; ++j) s[r][j] = V(0);
    for (int i = 0; i < NV; ++i) {
      V qv[NR];
      for (int r = 0; r < NR; ++r) qv[r] = V::loadu(q + r * D + i * K);
      for (int j = 0; j < 4; ++j) {
        const V kv = IO::load(k0 + j * kstride + i * K);
        for (int r = 0; r < NR; ++r) s[r][j] = at::vec::fmadd(qv[r], kv, s[r][j]);
      }
    }
    for (int r = 0; r < NR; ++r) _mm_storeu_ps(sc + r * ldsc, hsum4(s[r][0], s[r][1], s[r][2], s[r][3]));
  }
}

// sc[(r - r0) * ldsc + j] = q_r . k_j for the four K rows k_j = k0 + j * kstride and query rows
// [r_first, r_end), D = NV vectors. The K rows are converted once: into registers when they fit
// (AVX-512 up to D = 64), else into kbuf [4][D].
template <typename T, int NV>
inline void scores4(const T* k0, int64_t kstride, const float* q, int64_t r_first, int64_t r_end,
                    int64_t r0, float* sc, int64_t ldsc, float* kbuf) {
  if constexpr (kHasHsum4<acc_t<T>>) {
    using IO = VecIO<T>;
    using V = Vectorized<float>;
    constexpr int64_t K = V::size(), D = NV * K;
    if constexpr (4 * NV <= 16) {
      V k[4][NV];
      for (int j = 0; j < 4; ++j)
        for (int i = 0; i < NV; ++i) k[j][i] = IO::load(k0 + j * kstride + i * K);
      for (int64_t r = r_first; r < r_end; ++r) {
        const float* qr = q + (r - r0) * D;
        V s[4] = {V(0), V(0), V(0), V(0)};
        for (int i = 0; i < NV; ++i) {
          const V qv = V::loadu(qr + i * K);
          for (int j = 0; j < 4; ++j) s[j] = at::vec::fmadd(qv, k[j][i], s[j]);
        }
        _mm_storeu_ps(sc + (r - r0) * ldsc, hsum4(s[0], s[1], s[2], s[3]));
      }
    } else if (r_end - r_first <= 3) {
      // A decode step's few query rows: each K vector converted in a register and used by every
      // row, no staging in kbuf; the same sums in the same order as below.
      switch (r_end - r_first) {
        case 1: scores4_few<T, NV, 1>(k0, kstride, q + (r_first - r0) * D, sc + (r_first - r0) * ldsc, ldsc); break;
        case 2: scores4_few<T, NV, 2>(k0, kstride, q + (r_first - r0) * D, sc + (r_first - r0) * ldsc, ldsc); break;
        case 3: scores4_few<T, NV, 3>(k0, kstride, q + (r_first - r0) * D, sc + (r_first - r0) * ldsc, ldsc); break;
        default: break;
      }
    } else {
      const float* k[4];
      for (int j = 0; j < 4; ++j) k[j] = as_acc<T>(k0 + j * kstride, kbuf + j * D, D);
      for (int64_t r = r_first; r < r_end; ++r) {
        const float* qr = q + (r - r0) * D;
        V s[4] = {V(0), V(0), V(0), V(0)};
        for (int64_t i = 0; i < D; i += K) {
          const V qv = V::loadu(qr + i);
          for (int j = 0; j < 4; ++j) s[j] = at::vec::fmadd(qv, V::loadu(k[j] + i), s[j]);
        }
        _mm_storeu_ps(sc + (r - r0) * ldsc, hsum4(s[0], s[1], s[2], s[3]));
      }
    }
  }
}

// Fixed-width micro-kernels (NV = D / vector width, a compile-time constant) that keep a K row
// or a block of accumulators in registers and convert bf16/fp16 on the load.

// sc[(r - r0) * ldsc] = q_r . k for rows r in [r_first, r_end) (q rows are [.., D] in A).
template <typename T, int NV>
inline void scores_fixed(const T* krow, const acc_t<T>* q, int64_t r_first, int64_t r_end,
                         int64_t r0, acc_t<T>* sc, int64_t ldsc) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  using V = typename IO::V;
  constexpr int64_t K = IO::kSize, D = NV * K;
  V kv[NV];
  for (int i = 0; i < NV; ++i) kv[i] = IO::load(krow + i * K);
  for (int64_t r = r_first; r < r_end; ++r) {
    const A* qr = q + (r - r0) * D;
    V s0 = V::loadu(qr) * kv[0];
    V s1(0);
    for (int i = 1; i < NV; ++i) {
      if (i & 1) s1 = at::vec::fmadd(V::loadu(qr + i * K), kv[i], s1);
      else s0 = at::vec::fmadd(V::loadu(qr + i * K), kv[i], s0);
    }
    sc[(r - r0) * ldsc] = at::vec::vec_reduce_all<A>([](V& x, V& y) { return x + y; }, s0 + s1);
  }
}

// acc[R rows][NV vectors] += p[R rows][0..n) . V[0..n)[NV vectors], accumulators in registers;
// accumulator rows lda apart (D, or more when this pass covers part of D).
template <typename T, int NV, int R>
inline void pv_fixed(const T* v, int64_t ld, int64_t n, const acc_t<T>* p, int64_t ldp,
                     acc_t<T>* acc, int64_t lda) {
  using IO = VecIO<T>;
  using V = typename IO::V;
  constexpr int64_t K = IO::kSize;
  V a[R][NV];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < NV; ++i) a[r][i] = V::loadu(acc + r * lda + i * K);
  for (int64_t t = 0; t < n; ++t) {
    V pr[R];
    for (int r = 0; r < R; ++r) pr[r] = V(p[r * ldp + t]);
    const T* vr = v + t * ld;
    for (int i = 0; i < NV; ++i) {
      const V vi = IO::load(vr + i * K);
      for (int r = 0; r < R; ++r) a[r][i] = at::vec::fmadd(pr[r], vi, a[r][i]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < NV; ++i) a[r][i].store(acc + r * lda + i * K);
}

// Query rows [r0, r1) of sequence b (length L) and KV head g against KV rows [t0, t1):
// leaves the unnormalised accumulator acc[r-r0][D], running max m and sum l.
// NV > 0: D == NV * vector width, fixed-width micro-kernels; NV == 0: any D.
template <typename T, int NV>
void attend(const Problem<T>& P, const Item& it, int64_t L, Scratch<acc_t<T>>& w, acc_t<T>* acc,
            acc_t<T>* m, acc_t<T>* l) {
  using A = acc_t<T>;
  const int64_t D = P.D, G = P.G, S = P.S, Hq = P.Hq, Hkv = P.Hkv;
  const int64_t nr = it.r1 - it.r0;
  const int64_t base = L - S;  // position of query s is base + s
  for (int64_t r = it.r0; r < it.r1; ++r) {
    const int64_t s = r / G, j = r % G;
    const T* src = P.q + ((it.b * S + s) * Hq + it.g * G + j) * D;
    A* dst = w.q.data() + (r - it.r0) * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = A(src[d]) * P.scale;
  }
  std::fill(acc, acc + nr * D, A(0));
  std::fill(m, m + nr, -std::numeric_limits<A>::infinity());
  std::fill(l, l + nr, A(0));
  // Rows past the last row's position are masked for every query row of this block.
  const int64_t t_end = std::min(it.t1, base + (it.r1 - 1) / G + 1);
  // First query row that may see KV row t: s >= t - base.
  auto first_row = [&](int64_t t) {
    return std::max(it.r0, std::max<int64_t>(0, t - base) * G);
  };
  // KV rows [u0, ..) visible to query row r.
  auto visible = [&](int64_t r, int64_t u0, int64_t u1) {
    return std::max<int64_t>(0, std::min(u1, base + r / G + 1) - u0);
  };
  A* sc = w.sc.data();
  const T* kbase = P.k + P.cs.at(it.b, 0, it.g);
  const T* vbase = P.v + P.cs.at(it.b, 0, it.g);
  const int64_t row_stride = P.cs.t;
  for (int64_t u0 = it.t0; u0 < t_end; u0 += kKvBlock) {
    const int64_t u1 = std::min(u0 + kKvBlock, t_end);
    // Scores: each K row is loaded once for all query rows of the group.
    int64_t t = u0;
    if constexpr (NV > 0 && kHasHsum4<A>) {
      // Rows that cannot see all four K rows get scores for the ones past their position too;
      // the softmax below uses only each row's visible prefix.
      for (; t + 4 <= u1; t += 4) {
        prefetch_rows(kbase, row_stride, std::min(t + kPrefetchAhead, t_end - 4), D);
        prefetch_rows(vbase, row_stride, t, D);  // read by the P V pass after this block's softmax
        scores4<T, NV>(kbase + t * row_stride, row_stride, w.q.data(), first_row(t), it.r1, it.r0,
                       sc + (t - u0), kKvBlock, w.kv.data());
      }
    }
    for (; t < u1; ++t) {
      if constexpr (NV > 0) {
        scores_fixed<T, NV>(kbase + t * row_stride, w.q.data(), first_row(t), it.r1, it.r0,
                            sc + (t - u0), kKvBlock);
      } else {
        const A* kr = as_acc<T>(kbase + t * row_stride, w.kv.data(), D);
        for (int64_t r = first_row(t); r < it.r1; ++r)
          sc[(r - it.r0) * kKvBlock + (t - u0)] = dot<A>(w.q.data() + (r - it.r0) * D, kr, D);
      }
    }
    // Online softmax update per query row; masked probabilities are set to 0.
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const int64_t rr = r - it.r0;
      const int64_t n = visible(r, u0, u1);
      A* row = sc + rr * kKvBlock;
      std::fill(row + n, row + (u1 - u0), A(0));
      if (n == 0) continue;
      const A m_new = std::max(m[rr], row_max<A>(row, n));
      if (l[rr] > A(0) && m_new > m[rr]) {
        const A alpha = std::exp(m[rr] - m_new);
        scale_inplace<A>(alpha, acc + rr * D, D);
        l[rr] *= alpha;
      }
      m[rr] = m_new;
      l[rr] += row_exp_sum<A>(row, n, A(1), m_new, row);
    }
    // acc += P V: each V row is loaded once per block of query rows.
    if constexpr (NV > 0) {
      constexpr int R = NV <= 2 ? 4 : (NV <= 4 ? 4 : (NV <= 5 ? 3 : (NV <= 8 ? 2 : 1)));
      const T* v0 = vbase + u0 * row_stride;
      int64_t r = it.r0;
      if constexpr (NV == 8) {
        // Three rows that see the same KV rows (a decode step's 3 query heads per KV head): two
        // passes over half of D, each with all three rows, convert every V row once where R = 2
        // rows and then 1 converted it twice. Each accumulator sums the same terms in the same
        // order, so the result is the same to the bit.
        if (it.r1 - it.r0 == 3 && visible(it.r0, u0, u1) == visible(it.r1 - 1, u0, u1)) {
          constexpr int64_t kHalf = NV / 2 * Vectorized<A>::size();
          const int64_t n = visible(it.r0, u0, u1);
          for (int64_t h = 0; h < 2; ++h)
            pv_fixed<T, NV / 2, 3>(v0 + h * kHalf, row_stride, n, sc, kKvBlock, acc + h * kHalf, D);
          r = it.r1;
        }
      }
      for (; r + R <= it.r1; r += R) {
        const int64_t n = visible(r + R - 1, u0, u1);  // the block's last row sees the most
        pv_fixed<T, NV, R>(v0, row_stride, n, sc + (r - it.r0) * kKvBlock, kKvBlock,
                           acc + (r - it.r0) * D, D);
      }
      // The rest (fewer than R rows, e.g. the 3 query heads of a KV head) in one pass over V.
      const int64_t left = it.r1 - r;
      const int64_t n_left = left > 0 ? visible(it.r1 - 1, u0, u1) : 0;
      A* acc_left = acc + (r - it.r0) * D;
      const A* p_left = sc + (r - it.r0) * kKvBlock;
      if constexpr (R > 3) {
        if (left == 3) pv_fixed<T, NV, 3>(v0, row_stride, n_left, p_left, kKvBlock, acc_left, D);
      }
      if constexpr (R > 2) {
        if (left == 2) pv_fixed<T, NV, 2>(v0, row_stride, n_left, p_left, kKvBlock, acc_left, D);
      }
      if (left == 1) pv_fixed<T, NV, 1>(v0, row_stride, n_left, p_left, kKvBlock, acc_left, D);
    } else {
      for (int64_t t = u0; t < u1; ++t) {
        const A* vr = as_acc<T>(vbase + t * row_stride, w.kv.data(), D);
        for (int64_t r = first_row(t); r < it.r1; ++r) {
          const int64_t rr = r - it.r0;
          axpy<A>(sc[rr * kKvBlock + (t - u0)], vr, acc + rr * D, D);
        }
      }
    }
  }
}

// out = acc * inv rounded to the cache's type T (decode_attention's own output), held in the output
// type O: T itself, or the fused step's activations (so its result is the bits of its parts).
template <typename O, typename T, typename A>
void store_row(const A* acc, A inv, O* out, int64_t D) {
  if constexpr (std::is_same_v<O, T>) {
    using IO = VecIO<T>;
    using V = typename IO::V;
    constexpr int64_t K = IO::kSize;
    const V vi(inv);
    int64_t i = 0;
    for (; i + K <= D; i += K) IO::store(out + i, V::loadu(acc + i) * vi);
    for (; i < D; ++i) out[i] = T(acc[i] * inv);
  } else {
    for (int64_t i = 0; i < D; ++i) out[i] = static_cast<O>(static_cast<A>(static_cast<T>(acc[i] * inv)));
  }
}

// Attention of q [B, S, Hq, D] (T, as the caches) into out [B, S, Hq, D] of type O.
template <typename T, typename O>
void decode_kernel(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const std::vector<int64_t>& lens, double scale, at::Tensor& out) {
  using A = acc_t<T>;
  const int64_t B = q.size(0), S = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k_cache.size(2);
  const int64_t G = Hq / Hkv, nq = S * G;
  Problem<T> P{q.const_data_ptr<T>(), k_cache.const_data_ptr<T>(), v_cache.const_data_ptr<T>(),
               CacheStrides(k_cache), S, Hq, Hkv, G, D, A(scale)};
  O* op = out.mutable_data_ptr<O>();

  // Work items: a fixed function of the shapes and lengths.
  std::vector<Item> items;
  struct Combine { int64_t b, g, part0, nsplit; };
  std::vector<Combine> combines;
  int64_t nparts = 0;
  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lens[b];
    work += L * Hq;
    const int64_t nsplit =
        nq <= kRowBlock ? std::max<int64_t>(1, (L + kSplitLen - 1) / kSplitLen) : 1;
    for (int64_t g = 0; g < Hkv; ++g) {
      if (nsplit > 1) {
        combines.push_back({b, g, nparts, nsplit});
        for (int64_t c = 0; c < nsplit; ++c)
          items.push_back({b, g, 0, nq, c * L / nsplit, (c + 1) * L / nsplit, nparts++});
      } else {
        for (int64_t r0 = 0; r0 < nq; r0 += kRowBlock)
          items.push_back({b, g, r0, std::min(nq, r0 + kRowBlock), 0, L, -1});
      }
    }
  }
  std::vector<A> pacc(nparts * nq * D), pm(nparts * nq), pl(nparts * nq);
  const int64_t nitems = static_cast<int64_t>(items.size());
  // Small problems run on one thread (the result does not depend on it).
  const int64_t grain = work * D < (1 << 16) ? std::max<int64_t>(nitems, 1) : 1;
  auto run = [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    at::parallel_for(0, nitems, grain, [&](int64_t i0, int64_t i1) {
      Scratch<A> w(D);
      for (int64_t i = i0; i < i1; ++i) {
        const Item& it = items[i];
        const int64_t L = lens[it.b];
        if (it.part >= 0) {
          attend<T, NV>(P, it, L, w, pacc.data() + it.part * nq * D, pm.data() + it.part * nq,
                        pl.data() + it.part * nq);
          continue;
        }
        attend<T, NV>(P, it, L, w, w.acc.data(), w.m.data(), w.l.data());
        for (int64_t r = it.r0; r < it.r1; ++r) {
          const int64_t rr = r - it.r0, s = r / G, j = r % G;
          store_row<O, T>(w.acc.data() + rr * D, A(1) / w.l[rr],
                       op + ((it.b * S + s) * Hq + it.g * G + j) * D, D);
        }
      }
    });
  };
  constexpr int64_t kW = Vectorized<A>::size();
  switch (D % kW == 0 ? D / kW : 0) {
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    case 5: run(std::integral_constant<int, 5>{}); break;
    case 8: run(std::integral_constant<int, 8>{}); break;
    case 16: run(std::integral_constant<int, 16>{}); break;
    default: run(std::integral_constant<int, 0>{}); break;
  }
  if (combines.empty()) return;
  const int64_t ncomb = static_cast<int64_t>(combines.size());
  at::parallel_for(0, ncomb, std::max<int64_t>(1, 4096 / std::max<int64_t>(nq * D, 1)),
                   [&](int64_t c0, int64_t c1) {
    std::vector<A> tmp(D);
    for (int64_t c = c0; c < c1; ++c) {
      const Combine& cb = combines[c];
      for (int64_t r = 0; r < nq; ++r) {
        A M = -std::numeric_limits<A>::infinity();
        for (int64_t p = 0; p < cb.nsplit; ++p) M = std::max(M, pm[(cb.part0 + p) * nq + r]);
        std::fill(tmp.begin(), tmp.end(), A(0));
        A lsum = 0;
        for (int64_t p = 0; p < cb.nsplit; ++p) {
          const int64_t idx = (cb.part0 + p) * nq + r;
          if (pl[idx] == A(0)) continue;  // a range past this row's position
          const A wgt = std::exp(pm[idx] - M);
          lsum += wgt * pl[idx];
          axpy<A>(wgt, pacc.data() + idx * D, tmp.data(), D);
        }
        const int64_t s = r / G, j = r % G;
        store_row<O, T>(tmp.data(), A(1) / lsum, op + ((cb.b * S + s) * Hq + cb.g * G + j) * D, D);
      }
    }
  });
}

// Checks q and the caches against each other and the lengths lens (cache_lens, read as int64).
void check_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const std::vector<int64_t>& lens) {
  const int64_t B = q.size(0), S = q.size(1), Tmax = k_cache.size(1);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(lens[b] >= S && lens[b] <= Tmax, kDec, ": cache_lens[", b, "] = ", lens[b],
                      " must be in [S, Tmax] = [", S, ", ", Tmax,
                      "] (it counts the valid cache rows, the S new tokens included: append "
                      "them first)");
  }
}

void check_decode_shapes(const at::Tensor& q_, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_cpu(q_, kDec, "q");
  check_float(q_, kDec, "q");
  check_dim(q_, 4, kDec, "q", "[B, S, Hq, D]");
  check_caches(k_cache, v_cache, kDec);
  check_same_dtype(q_, "q", k_cache, "k_cache", kDec);
  const int64_t B = q_.size(0), Hq = q_.size(2), D = q_.size(3);
  const int64_t Hkv = k_cache.size(2);
  TORCH_CHECK_VALUE(k_cache.size(0) == B, kDec, ": k_cache batch size (", k_cache.size(0),
                    ") must match q [B, S, Hq, D] = ", shape_str(q_), ", got k_cache ",
                    shape_str(k_cache));
  TORCH_CHECK_VALUE(k_cache.size(3) == D, kDec, ": k_cache head_dim (", k_cache.size(3),
                    ") must match q head_dim D = ", D, "; q ", shape_str(q_), ", k_cache ",
                    shape_str(k_cache));
  TORCH_CHECK_VALUE(Hq % Hkv == 0, kDec, ": the query heads Hq = ", Hq,
                    " (q.size(2)) must be a multiple of the KV heads Hkv = ", Hkv,
                    " (k_cache.size(2))");
}

// decode_attention on checked arguments, the result in out_dtype (q's, or float32).
at::Tensor decode_rows(const at::Tensor& q_, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const std::vector<int64_t>& lens, std::optional<double> scale,
                       at::ScalarType out_dtype) {
  const int64_t D = q_.size(3);
  const double sc = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D));
  const at::Tensor q = q_.contiguous();
  const bool own = out_dtype == q.scalar_type();
  TORCH_INTERNAL_ASSERT(own || out_dtype == at::kFloat);
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention_cpu", [&] {
    if (own) {
      decode_kernel<scalar_t, scalar_t>(q, k_cache, v_cache, lens, sc, out);
    } else {
      decode_kernel<scalar_t, float>(q, k_cache, v_cache, lens, sc, out);
    }
  });
  return out;
}

at::Tensor decode_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                std::optional<double> scale) {
  check_decode_shapes(q, k_cache, v_cache);
  const auto lens = read_lens(cache_lens, kDec, q.size(0));
  check_decode(q, k_cache, v_cache, lens);
  return decode_rows(q, k_cache, v_cache, lens, scale, q.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// kv_cache_append

// cache_lens read as int64, each sequence's S new rows checked to fit after its rows (the bound
// written so it cannot overflow: rows_fit); `rows_of` names where S comes from. Before any write.
std::vector<int64_t> read_rows_that_fit(const at::Tensor& cache_lens, int64_t B, int64_t S, int64_t Tmax,
                                        const char* op, const char* rows_of) {
  TORCH_CHECK_VALUE(S <= Tmax, op, ": S = ", S, " new rows (", rows_of, ") do not fit a cache of Tmax = ",
                    Tmax, " rows (k_cache.size(1))");
  auto lens = read_lens(cache_lens, op, B);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(rows_fit(lens[b], S, Tmax), op, ": cache_lens[", b, "] = ", lens[b],
                      " leaves no room for S = ", S, " new rows: need 0 <= cache_lens[", b,
                      "] and cache_lens[", b, "] + S <= Tmax = ", Tmax);
  }
  return lens;
}

// kv_cache_append's checks, every one before any row is written; returns cache_lens as int64.
std::vector<int64_t> check_append(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& k_new, const at::Tensor& v_new,
                                  const at::Tensor& cache_lens) {
  check_caches(k_cache, v_cache, kApp);
  check_cpu(k_new, kApp, "k_new");
  check_cpu(v_new, kApp, "v_new");
  check_dim(k_new, 4, kApp, "k_new", "[B, S, Hkv, D]");
  check_dim(v_new, 4, kApp, "v_new", "[B, S, Hkv, D]");
  check_same_dtype(k_new, "k_new", k_cache, "k_cache", kApp);
  check_same_dtype(v_new, "v_new", v_cache, "v_cache", kApp);
  const int64_t B = k_cache.size(0), Tmax = k_cache.size(1), Hkv = k_cache.size(2),
                D = k_cache.size(3);
  const int64_t S = k_new.size(1);
  TORCH_CHECK_VALUE(k_new.size(0) == B && k_new.size(2) == Hkv && k_new.size(3) == D, kApp,
                    ": k_new must be [B, S, Hkv, D] with B = ", B, ", Hkv = ", Hkv, ", D = ", D,
                    " as in k_cache ", shape_str(k_cache), ", got ", shape_str(k_new));
  TORCH_CHECK_VALUE(v_new.sizes() == k_new.sizes(), kApp,
                    ": v_new must have the shape of k_new [B, S, Hkv, D] = ", shape_str(k_new),
                    ", got ", shape_str(v_new));
  return read_rows_that_fit(cache_lens, B, S, Tmax, kApp, "k_new.size(1)");
}

// Writes k_new/v_new at rows lens[b].. of checked arguments, one head row of D values at a time
// (the cache's layout decides where each lands).
void append_rows(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new,
                 const at::Tensor& v_new, const std::vector<int64_t>& lens) {
  const int64_t B = k_cache.size(0), Hkv = k_cache.size(2), D = k_cache.size(3);
  const int64_t S = k_new.size(1), seq = S * Hkv * D;  // one sequence's new values, contiguous in kn/vn
  if (seq == 0 || B == 0) return;
  // New rows that are themselves cache memory (a view of the rows they go to) are copied out first:
  // the row-by-row copy below would read rows it has already written.
  auto source = [&](const at::Tensor& t) {
    const bool overlaps = at::get_overlap_status(t, k_cache) != at::MemOverlapStatus::No ||
                          at::get_overlap_status(t, v_cache) != at::MemOverlapStatus::No;
    return overlaps ? t.clone(at::MemoryFormat::Contiguous) : t.contiguous();
  };
  const at::Tensor kn = source(k_new), vn = source(v_new);
  const CacheStrides cs(k_cache);
  const int64_t esize = k_cache.element_size();
  const char* ks = static_cast<const char*>(kn.const_data_ptr());
  const char* vs = static_cast<const char*>(vn.const_data_ptr());
  char* kd = static_cast<char*>(k_cache.mutable_data_ptr());
  char* vd = static_cast<char*>(v_cache.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / seq);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t h = 0; h < Hkv; ++h) {
          const int64_t dst = cs.at(b, lens[b] + s, h) * esize, src = ((b * S + s) * Hkv + h) * D * esize;
          std::memmove(kd + dst, ks + src, D * esize);
          std::memmove(vd + dst, vs + src, D * esize);
        }
      }
    }
  });
}

void kv_cache_append_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& k_new, const at::Tensor& v_new,
                         const at::Tensor& cache_lens) {
  const auto lens = check_append(k_cache, v_cache, k_new, v_new, cache_lens);
  append_rows(k_cache, v_cache, k_new, v_new, lens);
}

// ---------------------------------------------------------------------------------------------
// decode_attention_step

// decode_attention_step's q/k/v for rows r = b * S + s of qkv: per head, qk-norm and RoPE in
// qkv's dtype X with the separate ops' own arithmetic (row_kernels.h), then q into qc and k, v
// into cache rows lens[b] + s, each rounded to the cache dtype T as .to() rounds.
template <typename X, typename T>
struct StepRows {
  using AX = acc_t<X>;
  const X* qkv;                // [B, S, Hq + 2 Hkv, D]
  const AX* q_norm;            // [D] or nullptr (no qk_norm)
  const AX* k_norm;
  double eps;
  const AX* cos;               // [S, D/2] or [B, S, D/2] (per_batch)
  const AX* sin;
  bool per_batch;
  T* qc;                       // [B, S, Hq, D]
  T* k_cache;                  // [B, Tmax, Hkv, D]
  T* v_cache;
  CacheStrides cs;             // of both caches
  const int64_t* lens;         // rows already in the cache, per sequence
  int64_t S, Hq, Hkv, D;

  static void convert(const X* src, T* dst, int64_t n) {
    if constexpr (std::is_same_v<X, T>) {
      std::memcpy(dst, src, n * sizeof(T));
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(static_cast<AX>(src[i]));
    }
  }

  void prepare(int64_t r0, int64_t r1) const {
    std::vector<X> normed(D), rotated(D);
    const int64_t heads = Hq + 2 * Hkv, half = D / 2;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / S, s = r % S;
      const AX* c = cos + (per_batch ? r : s) * half;
      const AX* sn = sin + (per_batch ? r : s) * half;
      const X* row = qkv + r * heads * D;
      const int64_t cache_row = lens[b] + s;
      for (int64_t h = 0; h < Hq + Hkv; ++h) {
        const bool is_q = h < Hq;
        const X* src = row + h * D;
        if (q_norm != nullptr) {
          rms_norm_row<X>(src, is_q ? q_norm : k_norm, normed.data(), D, eps);
          src = normed.data();
        }
        rotate_head<X>(src, rotated.data(), c, sn, D);
        convert(rotated.data(), is_q ? qc + (r * Hq + h) * D : k_cache + cs.at(b, cache_row, h - Hq), D);
      }
      for (int64_t h = 0; h < Hkv; ++h) convert(row + (Hq + Hkv + h) * D, v_cache + cs.at(b, cache_row, h), D);
    }
  }
};

}  // namespace

// Declared in ops/cpu_kernels.h.
void check_kv_caches(const at::Tensor& k_cache, const at::Tensor& v_cache, const char* op) {
  check_caches(k_cache, v_cache, op);
}

at::Tensor decode_attention_step_cpu(const at::Tensor& qkv, const std::optional<at::Tensor>& q_norm,
                                     const std::optional<at::Tensor>& k_norm, double eps,
                                     const at::Tensor& cos, const at::Tensor& sin,
                                     const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& cache_lens, int64_t num_heads) {
  check_cpu(qkv, kStep, "qkv");
  check_float(qkv, kStep, "qkv");
  check_dim(qkv, 3, kStep, "qkv", "[B, S, (num_heads + 2 Hkv) * D]");
  check_caches(k_cache, v_cache, kStep);
  const int64_t B = qkv.size(0), S = qkv.size(1), Hkv = k_cache.size(2), D = k_cache.size(3);
  const int64_t Hq = num_heads;
  TORCH_CHECK_VALUE(Hq > 0 && Hq % Hkv == 0, kStep, ": num_heads = ", Hq,
                    " must be a positive multiple of the KV heads Hkv = ", Hkv,
                    " (k_cache.size(2))");
  // num_heads is a user int: the width is formed only where it fits in int64.
  int64_t heads = 0, width = 0;
  const bool fits = mul_add_fits(Hkv, 2, Hq, &heads) && mul_add_fits(heads, D, 0, &width);
  TORCH_CHECK_VALUE(fits, kStep, ": num_heads = ", Hq, " is too large: (num_heads + 2 Hkv) * D with Hkv = ",
                    Hkv, ", D = ", D, " does not fit in int64");
  TORCH_CHECK_VALUE(qkv.size(2) == width, kStep, ": qkv's last dim must be (num_heads + 2 Hkv) * D = (",
                    Hq, " + 2 * ", Hkv, ") * ", D, " = ", width,
                    " (q, k, v side by side), got ", shape_str(qkv));
  TORCH_CHECK_VALUE(k_cache.size(0) == B, kStep, ": k_cache batch size (", k_cache.size(0),
                    ") must match qkv ", shape_str(qkv));
  TORCH_CHECK_VALUE(q_norm.has_value() == k_norm.has_value(), kStep,
                    ": q_norm and k_norm go together (qk_norm): pass both or neither");
  const at::Tensor x = qkv.contiguous().view({B, S, heads, D});
  const bool qk_norm = q_norm.has_value();
  if (qk_norm) {
    for (const auto* nw : {&*q_norm, &*k_norm}) {
      const char* name = nw == &*q_norm ? "q_norm" : "k_norm";
      check_cpu(*nw, kStep, name);
      check_float(*nw, kStep, name);
      TORCH_CHECK_VALUE(nw->dim() == 1 && nw->size(0) == D, kStep, ": ", name, " must be [D] = [", D,
                        "] (one weight per head dim), got ", shape_str(*nw));
    }
    TORCH_CHECK_VALUE(eps >= 0, kStep, ": eps must be >= 0, got ", eps);
  }
  check_rotary_inputs(x.narrow(2, 0, Hq), cos, sin, kStep, "q");
  // Every check, the attention's included, before the caches are written.
  const auto lens = read_rows_that_fit(cache_lens, B, S, k_cache.size(1), kStep, "qkv.size(1)");
  std::vector<int64_t> lens_after(lens);
  for (auto& L : lens_after) L += S;  // cannot overflow: L <= Tmax - S
  const auto cd = k_cache.scalar_type();
  at::Tensor qc = at::empty({B, S, Hq, D}, k_cache.options());
  {
    const auto acc = at::toOpMathType(qkv.scalar_type());
    auto table = [&](const at::Tensor& t) { return t.scalar_type() == acc ? t.contiguous() : t.to(acc).contiguous(); };
    const at::Tensor c = table(cos), sn = table(sin);
    const at::Tensor qn = qk_norm ? table(*q_norm) : at::Tensor(), kn = qk_norm ? table(*k_norm) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "decode_attention_step_x", [&] {
      using X = scalar_t;
      using AX = acc_t<X>;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cd, "decode_attention_step_cache", [&] {
        using T = scalar_t;
        const StepRows<X, T> rows{x.const_data_ptr<X>(), qk_norm ? qn.const_data_ptr<AX>() : nullptr,
                                  qk_norm ? kn.const_data_ptr<AX>() : nullptr, eps, c.const_data_ptr<AX>(),
                                  sn.const_data_ptr<AX>(), c.dim() == 3, qc.mutable_data_ptr<T>(),
                                  k_cache.mutable_data_ptr<T>(), v_cache.mutable_data_ptr<T>(),
                                  CacheStrides(k_cache), lens.data(), S, Hq, Hkv, D};
        const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(heads * D, 1));
        at::parallel_for(0, B * S, grain, [&](int64_t r0, int64_t r1) { rows.prepare(r0, r1); });
      });
    });
  }
  // The attention writes qkv's dtype directly where it is the cache's or float32 (rounded through the
  // cache's dtype either way, as decode_attention's output is).
  const auto xd = qkv.scalar_type();
  const at::Tensor out = decode_rows(qc, k_cache, v_cache, lens_after, std::nullopt,
                                     xd == cd ? cd : at::kFloat);
  return out.view({B, S, Hq * D}).to(xd);
}

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("decode_attention", &decode_attention_cpu);
  m.impl("kv_cache_append", &kv_cache_append_cpu);
  m.impl("decode_attention_step", &decode_attention_step_cpu);
}

}  // namespace kr
