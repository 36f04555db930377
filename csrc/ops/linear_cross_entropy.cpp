// Linear + cross entropy (the LM head and its loss), fused and chunked over rows.
//
// For each chunk of `chunk_size` rows: logits[chunk, V] = hidden[chunk] @ weight^T by one
// GEMM (fp32 out; see gemm_acc), then one vectorised pass per row (threaded over rows) for
// max, sum(exp) and, when gradients are wanted, G = scale * (softmax - onehot) written in
// place over the logits; then grad_hidden[chunk] = G @ weight and grad_weight += G^T @
// hidden[chunk] by two more GEMMs (threaded by the BLAS). Only [chunk, V] logits exist at a
// time. Chunks run in order and grad_weight is accumulated in the accumulation dtype by
// beta=1 GEMMs in that order, so losses and grad_weight do not depend on the thread count.
// (cpublas::gemm, with its bf16->fp32 overload, is not exported by libtorch, hence gemm_acc.)
//
// Three entry points share one loop:
//   linear_cross_entropy           -> per-row losses and lse (no gradients);
//   linear_cross_entropy_backward  -> recomputes the logits from the saved lse and scales each
//                                     row by grad_losses[i] (the general backward, e.g. for
//                                     reduction "none"): 3 GEMMs on top of the forward's 1;
//   linear_cross_entropy_and_grad  -> the mean/sum loss and its gradients in one pass, as
//                                     Liger-Kernel does: 3 GEMMs in all, the autograd backward
//                                     only scales them by the incoming scalar gradient.
#include "ops/common.h"

#include <cmath>
#include <cstdlib>
#include <limits>

namespace kr {
namespace {

constexpr const char* kOp = "linear_cross_entropy";

struct Dims {
  int64_t N, C, V;
};

Dims check_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                  int64_t ignore_index, int64_t chunk_size, const char* op) {
  check_cpu(hidden, op, "hidden");
  check_cpu(weight, op, "weight");
  check_cpu(targets, op, "targets");
  check_float(hidden, op, "hidden");
  check_float(weight, op, "weight");
  check_same_dtype(hidden, "hidden", weight, "weight", op);
  check_dim(hidden, 2, op, "hidden", "[N, C]");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(1), op,
                    ": weight must be [V, C] with C = ", hidden.size(1), " to match hidden ",
                    shape_str(hidden), ", got ", shape_str(weight));
  TORCH_CHECK_VALUE(weight.size(0) >= 1, op, ": weight must have at least one row (V >= 1), got ",
                    shape_str(weight));
  TORCH_CHECK_TYPE(targets.scalar_type() == at::kLong, op, ": targets must be int64 class indices, got ",
                   targets.scalar_type());
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == hidden.size(0), op,
                    ": targets must be [N] = [", hidden.size(0), "] to match hidden ",
                    shape_str(hidden), ", got ", shape_str(targets));
  TORCH_CHECK_VALUE(chunk_size >= 1, op, ": chunk_size must be >= 1, got ", chunk_size);
  return {hidden.size(0), hidden.size(1), weight.size(0)};
}

// Every target is a class in [0, V) or ignore_index; checked before any row is read.
int64_t count_valid_targets(const at::Tensor& targets, int64_t V, int64_t ignore_index,
                            const char* op) {
  const int64_t* t = targets.const_data_ptr<int64_t>();
  const int64_t N = targets.numel();
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore_index) continue;
    TORCH_CHECK_VALUE(t[i] >= 0 && t[i] < V, op, ": targets must be class indices in [0, V) = [0, ",
                      V, ") or ignore_index (", ignore_index, "), got targets[", i, "] = ", t[i]);
    ++valid;
  }
  return valid;
}

// ---- GEMMs: c (acc dtype, [m, n] row-major) = or += op(a) @ op(b), a and b in T ----
//
// fp32/fp64: at::mm/at::addmm on views (the BLAS torch was built with). bf16/fp16: MKL's
// bf16->fp32 / fp16->fp32 GEMM when the torch build carries MKL (x86 wheels do; the symbols
// are looked up weakly, so other builds still link and load), which keeps the logits and the
// grad_weight accumulation in fp32. Elsewhere (or with KR_MINI_LLM_LCE_NO_MKL=1, which the
// tests use to cover this path) at::mm in T (fp32 accumulation inside the GEMM, result
// rounded to T as F.linear does) followed by a copy/add into the fp32 buffer.
#if defined(__linux__)
extern "C" {
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const void* a, int lda, const void* b, int ldb, float beta, float* c,
                            int ldc) __attribute__((weak));
void cblas_gemm_f16f16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                          const void* a, int lda, const void* b, int ldb, float beta, float* c,
                          int ldc) __attribute__((weak));
}
#endif

using LowpGemm = void (*)(int, int, int, int, int, int, float, const void*, int, const void*, int, float,
                          float*, int);

LowpGemm lowp_gemm(at::ScalarType st) {
  const char* off = std::getenv("KR_MINI_LLM_LCE_NO_MKL");
  if (off != nullptr && off[0] == '1') return nullptr;
#if defined(__linux__)
  if (st == at::kBFloat16) return &cblas_gemm_bf16bf16f32 ? &cblas_gemm_bf16bf16f32 : nullptr;
  if (st == at::kHalf) return &cblas_gemm_f16f16f32 ? &cblas_gemm_f16f16f32 : nullptr;
#endif
  return nullptr;
}

void gemm_acc(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb, at::Tensor& c, bool accumulate,
              LowpGemm lowp) {
  const at::Tensor opa = ta ? a.t() : a;
  const at::Tensor opb = tb ? b.t() : b;
  if (a.scalar_type() == c.scalar_type()) {
    if (accumulate) {
      c.addmm_(opa, opb);
    } else {
      at::mm_out(c, opa, opb);
    }
    return;
  }
  const int64_t m = c.size(0), n = c.size(1), k = opa.size(1);
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  // a, b: row-major with unit column stride and row stride lda/ldb (G's may exceed its width).
  if (lowp != nullptr && m <= kMax && n <= kMax && k <= kMax && a.stride(0) <= kMax && b.stride(0) <= kMax &&
      c.numel() <= kMax && a.stride(1) == 1 && b.stride(1) == 1 && c.is_contiguous()) {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
    lowp(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, int(m), int(n), int(k), 1.0f,
         a.const_data_ptr(), int(a.stride(0)), b.const_data_ptr(), int(b.stride(0)), accumulate ? 1.0f : 0.0f,
         c.mutable_data_ptr<float>(), int(n));
    return;
  }
  const at::Tensor prod = at::mm(opa, opb);
  if (accumulate) {
    c.add_(prod);
  } else {
    c.copy_(prod);
  }
}

template <typename A>
inline Vectorized<A> vexp(const Vectorized<A>& x) {
  if constexpr (std::is_same_v<A, float>) {
    return x.exp_u20();  // <= 20 ulp (~1e-6 relative) at a fraction of exp()'s cost
  } else {
    return x.exp();
  }
}

// log(sum(exp(x))) of one row, max-shifted.
template <typename A>
A row_logsumexp(const A* x, int64_t V) {
  using Vec = Vectorized<A>;
  constexpr int64_t K = Vec::size();
  int64_t j = 0;
  A mx = -std::numeric_limits<A>::infinity();
  if (V >= K) {
    Vec vm = Vec::loadu(x);
    for (j = K; j + K <= V; j += K) vm = at::vec::maximum(vm, Vec::loadu(x + j));
    mx = at::vec::vec_reduce_all<A>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vm);
  }
  for (; j < V; ++j) mx = std::max(mx, x[j]);
  if (std::isinf(mx)) return mx;  // all -inf (or an inf logit): lse is that inf
  const Vec vmx(mx);
  Vec acc(0);
  j = 0;
  for (; j + K <= V; j += K) acc = acc + vexp<A>(Vec::loadu(x + j) - vmx);
  A sum = at::vec::vec_reduce_all<A>([](Vec& a, Vec& b) { return a + b; }, acc);
  if (j < V) {
    Vec tail = vexp<A>(Vec::loadu(x + j, V - j) - vmx);
    __at_align__ A buf[K];
    tail.store(buf);
    for (int64_t k = 0; k < V - j; ++k) sum += buf[k];
  }
  return mx + std::log(sum);
}

// g[j] = scale * (exp(x[j] - lse) - [j == target]) for one row, x in acc, g in T (may alias x).
template <typename T>
void row_grad(const acc_t<T>* x, T* g, int64_t V, acc_t<T> lse, acc_t<T> scale, int64_t target) {
  using A = acc_t<T>;
  using IO = VecIO<T>;
  using Vec = Vectorized<A>;
  constexpr int64_t K = Vec::size();
  const Vec vl(lse), vs(scale);
  // Read before the loop: g may alias x. Recomputed in acc so the -1 keeps its bits in T.
  const A gt = scale * (std::exp(x[target] - lse) - A(1));
  int64_t j = 0;
  for (; j + K <= V; j += K) IO::store(g + j, vexp<A>(Vec::loadu(x + j) - vl) * vs);
  if (j < V) IO::store(g + j, vexp<A>(Vec::loadu(x + j, V - j) - vl) * vs, V - j);
  g[target] = T(gt);
}

enum class Mode { kForward, kBackward, kFused };

struct Outputs {
  // kForward / kFused: per-row losses and lse (written). kBackward: lse (read).
  void* losses = nullptr;
  void* lse = nullptr;
  const void* grad_losses = nullptr;  // kBackward: per-row scale
  double scale = 1.0;                 // kFused: uniform scale
  at::Tensor grad_hidden;             // T [N, C], or undefined
  at::Tensor grad_weight;             // acc [V, C], or undefined
};

// The loop all three ops share: chunks of rows in order, logits by one GEMM, a threaded row
// pass, then the two gradient GEMMs.
template <typename T>
void run_chunks(Mode mode, const at::Tensor& hidden, const at::Tensor& weight, const int64_t* tgt, Dims d,
                int64_t ignore_index, int64_t chunk_size, Outputs& o) {
  using A = acc_t<T>;
  constexpr bool kSame = std::is_same_v<T, A>;
  const int64_t N = d.N, C = d.C, V = d.V;
  const int64_t chunk = std::min(chunk_size, N);
  const bool want_grad = mode != Mode::kForward;
  const bool want_gh = want_grad && o.grad_hidden.defined();
  const bool want_gw = want_grad && o.grad_weight.defined();
  A* losses = static_cast<A*>(o.losses);
  A* lse = static_cast<A*>(o.lse);
  const A* gl = static_cast<const A*>(o.grad_losses);
  const LowpGemm lowp = kSame ? nullptr : lowp_gemm(hidden.scalar_type());
  const auto acc_opts = hidden.options().dtype(c10::CppTypeToScalarType<A>::value);

  at::Tensor logits_buf = at::empty({chunk, V}, acc_opts);
  // softmax - onehot overwrites the logits in place. For bf16/fp16 row r of G (in T) sits at
  // the start of logits row r's bytes (row stride V * sizeof(A) / sizeof(T) elements of T):
  // each row is converted front to back by one thread, writing only bytes it has already read.
  constexpr int64_t kRatio = int64_t(sizeof(A) / sizeof(T));
  const int64_t ldg = V * kRatio;
  at::Tensor g_buf;   // [chunk, V] view of T with row stride ldg
  at::Tensor gh_buf;  // grad_hidden of a chunk in acc (bf16/fp16)
  if (want_grad) g_buf = kSame ? logits_buf : logits_buf.view(hidden.scalar_type()).narrow(1, 0, V);
  if (want_gh && !kSame) gh_buf = at::empty({chunk, C}, acc_opts);
  A* logits = logits_buf.mutable_data_ptr<A>();
  T* g = want_grad ? g_buf.mutable_data_ptr<T>() : nullptr;

  const int64_t grain = std::max<int64_t>(1, 16384 / V);
  bool first_gw = true;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    const at::Tensor hc = hidden.narrow(0, r0, rows);
    at::Tensor lc = logits_buf.narrow(0, 0, rows);
    gemm_acc(hc, false, weight, true, lc, false, lowp);
    at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = r0 + r;
        const A* x = logits + r * V;
        const int64_t t = tgt[i];
        const bool ignored = t == ignore_index;
        A l;
        if (mode == Mode::kBackward) {
          l = lse[i];
        } else {
          l = row_logsumexp<A>(x, V);
          lse[i] = l;
          losses[i] = ignored ? A(0) : l - x[t];
        }
        if (!want_grad) continue;
        T* gr = g + r * ldg;
        const A sc = mode == Mode::kBackward ? gl[i] : A(o.scale);
        if (ignored) {
          std::fill(gr, gr + V, T(0));
        } else {
          row_grad<T>(x, gr, V, l, sc, t);
        }
      }
    });
    if (!want_grad) continue;
    const at::Tensor gc = g_buf.narrow(0, 0, rows);
    if (want_gh) {
      at::Tensor ghc = o.grad_hidden.narrow(0, r0, rows);
      if constexpr (kSame) {
        gemm_acc(gc, false, weight, false, ghc, false, lowp);
      } else {
        at::Tensor tmp = gh_buf.narrow(0, 0, rows);
        gemm_acc(gc, false, weight, false, tmp, false, lowp);
        ghc.copy_(tmp);
      }
    }
    if (want_gw) {
      gemm_acc(gc, true, hc, false, o.grad_weight, !first_gw, lowp);
      first_gw = false;
    }
  }
}

// ---------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> lce_forward_cpu(const at::Tensor& hidden_, const at::Tensor& weight_,
                                                   const at::Tensor& targets_, int64_t ignore_index,
                                                   int64_t chunk_size) {
  const Dims d = check_inputs(hidden_, weight_, targets_, ignore_index, chunk_size, kOp);
  const at::Tensor targets = targets_.contiguous();
  count_valid_targets(targets, d.V, ignore_index, kOp);
  const at::Tensor hidden = hidden_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const auto acc = at::toOpMathType(hidden.scalar_type());
  at::Tensor losses = at::empty({d.N}, hidden.options().dtype(acc));
  at::Tensor lse = at::empty({d.N}, hidden.options().dtype(acc));
  if (d.N == 0) return {losses, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "linear_cross_entropy_cpu", [&] {
    Outputs o;
    o.losses = losses.data_ptr();
    o.lse = lse.data_ptr();
    run_chunks<scalar_t>(Mode::kForward, hidden, weight, targets.const_data_ptr<int64_t>(), d, ignore_index,
                         chunk_size, o);
  });
  return {losses, lse};
}

std::tuple<at::Tensor, at::Tensor> lce_backward_cpu(const at::Tensor& grad_losses_, const at::Tensor& hidden_,
                                                    const at::Tensor& weight_, const at::Tensor& targets_,
                                                    const at::Tensor& lse_, int64_t ignore_index,
                                                    int64_t chunk_size) {
  constexpr const char* op = "linear_cross_entropy_backward";
  const Dims d = check_inputs(hidden_, weight_, targets_, ignore_index, chunk_size, op);
  const auto acc = at::toOpMathType(hidden_.scalar_type());
  check_cpu(grad_losses_, op, "grad_losses");
  check_float(grad_losses_, op, "grad_losses");
  TORCH_CHECK_VALUE(grad_losses_.dim() == 1 && grad_losses_.size(0) == d.N, op,
                    ": grad_losses must be [N] = [", d.N, "], got ", shape_str(grad_losses_));
  TORCH_CHECK_VALUE(lse_.dim() == 1 && lse_.size(0) == d.N && lse_.scalar_type() == acc, op,
                    ": lse must be the [N] = [", d.N, "] ", acc, " tensor saved by the forward, got ",
                    shape_str(lse_), " ", lse_.scalar_type());
  const at::Tensor targets = targets_.contiguous();
  count_valid_targets(targets, d.V, ignore_index, op);
  const at::Tensor hidden = hidden_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor gl = grad_losses_.to(acc).contiguous();
  const at::Tensor lse = lse_.contiguous();
  at::Tensor grad_hidden = at::empty_like(hidden);
  // The first chunk's GEMM overwrites gw (beta = 0); it stays 0 only when there is no row.
  at::Tensor gw = d.N == 0 ? at::zeros({d.V, d.C}, hidden.options().dtype(acc))
                           : at::empty({d.V, d.C}, hidden.options().dtype(acc));
  if (d.N == 0) return {grad_hidden, gw.to(weight.scalar_type())};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "linear_cross_entropy_backward_cpu", [&] {
    Outputs o;
    o.lse = const_cast<void*>(lse.const_data_ptr());
    o.grad_losses = gl.const_data_ptr();
    o.grad_hidden = grad_hidden;
    o.grad_weight = gw;
    run_chunks<scalar_t>(Mode::kBackward, hidden, weight, targets.const_data_ptr<int64_t>(), d, ignore_index,
                         chunk_size, o);
  });
  return {grad_hidden, gw.to(weight.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lce_and_grad_cpu(
    const at::Tensor& hidden_, const at::Tensor& weight_, const at::Tensor& targets_, int64_t ignore_index,
    int64_t chunk_size, bool mean, bool need_grad_hidden, bool need_grad_weight) {
  constexpr const char* op = "linear_cross_entropy_and_grad";
  const Dims d = check_inputs(hidden_, weight_, targets_, ignore_index, chunk_size, op);
  const auto acc = at::toOpMathType(hidden_.scalar_type());
  const at::Tensor targets = targets_.contiguous();
  const int64_t valid = count_valid_targets(targets, d.V, ignore_index, op);
  const at::Tensor hidden = hidden_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  // mean over the non-ignored rows; with none of them the loss is 0 and so are its gradients.
  const double scale = mean ? 1.0 / double(std::max<int64_t>(valid, 1)) : 1.0;
  at::Tensor losses = at::empty({d.N}, hidden.options().dtype(acc));
  at::Tensor lse = at::empty({d.N}, hidden.options().dtype(acc));
  at::Tensor grad_hidden = need_grad_hidden ? at::empty_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor gw = !need_grad_weight ? at::empty({0}, hidden.options().dtype(acc))
                 : d.N == 0          ? at::zeros({d.V, d.C}, hidden.options().dtype(acc))
                                     : at::empty({d.V, d.C}, hidden.options().dtype(acc));
  at::Tensor loss = at::zeros({}, hidden.options().dtype(acc));
  if (d.N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "linear_cross_entropy_and_grad_cpu", [&] {
      using A = acc_t<scalar_t>;
      Outputs o;
      o.losses = losses.data_ptr();
      o.lse = lse.data_ptr();
      o.scale = scale;
      if (need_grad_hidden) o.grad_hidden = grad_hidden;
      if (need_grad_weight) o.grad_weight = gw;
      const Mode mode = need_grad_hidden || need_grad_weight ? Mode::kFused : Mode::kForward;
      run_chunks<scalar_t>(mode, hidden, weight, targets.const_data_ptr<int64_t>(), d, ignore_index,
                           chunk_size, o);
      // Sum in a fixed order (double), whatever the thread count.
      const A* lp = losses.const_data_ptr<A>();
      double total = 0;
      for (int64_t i = 0; i < d.N; ++i) total += double(lp[i]);
      loss.fill_(total * scale);
    });
  }
  at::Tensor grad_weight = need_grad_weight ? gw.to(weight.scalar_type()) : at::empty({0}, weight.options());
  return {loss, grad_hidden, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("linear_cross_entropy", &lce_forward_cpu);
  m.impl("linear_cross_entropy_backward", &lce_backward_cpu);
  m.impl("linear_cross_entropy_and_grad", &lce_and_grad_cpu);
}

}  // namespace kr
