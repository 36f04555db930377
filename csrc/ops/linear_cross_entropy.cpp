// Linear + cross entropy (the LM head and its loss), fused and chunked over rows.
//
// For each chunk of `chunk_size` rows: logits[chunk, V] = hidden[chunk] @ weight^T by one
// GEMM (oneDNN; for bf16/fp16 with native dot products the logits stay in that dtype, rounded
// as F.linear's are, and are read as they are; otherwise in fp32), then one vectorised pass per
// row (threaded over rows) for max, sum(exp) and, when gradients are wanted, G = scale *
// (softmax - onehot) from the same exps, written in place over the logits; then
// grad_hidden[chunk] = G @ weight and grad_weight += G^T @
// hidden[chunk] by two more GEMMs (threaded by the BLAS). Only [chunk, V] logits exist at a
// time. Chunks run in order and grad_weight is accumulated in the accumulation dtype by
// beta=1 GEMMs in that order, so losses and grad_weight depend on the thread count only
// through the GEMM library (bitwise equal unless it splits a GEMM's inner dimension over threads).
//
// Three entry points share one loop:
//   linear_cross_entropy           -> per-row losses and lse (no gradients);
//   linear_cross_entropy_backward  -> recomputes the logits from the saved lse and scales each
//                                     row by grad_losses[i] (the general backward, e.g. for
//                                     reduction "none"): 3 GEMMs on top of the forward's 1;
//   linear_cross_entropy_and_grad  -> the mean/sum loss and its gradients in one pass, as
//                                     Liger-Kernel does: 3 GEMMs in all, the autograd backward
//                                     only scales them by the incoming scalar gradient.
#include "ops/gemm.h"
#include "ops/softmax_rows.h"

#include <cmath>
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
  // weight may also be in hidden's accumulation dtype (fp32 master weights with bf16/fp16 hidden
  // under autocast): cast once inside, and grad_weight comes back in fp32 without a round trip.
  const auto acc = at::toOpMathType(hidden.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type() || weight.scalar_type() == acc, op, ": hidden (",
                   hidden.scalar_type(), ") and weight (", weight.scalar_type(), ") must have the same dtype",
                   acc != hidden.scalar_type() ? ", or weight the accumulation dtype " : "",
                   acc != hidden.scalar_type() ? c10::toString(acc) : "");
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

// The weight the GEMMs read: contiguous, in hidden's dtype.
at::Tensor gemm_weight(const at::Tensor& hidden, const at::Tensor& weight) {
  return weight.to(hidden.scalar_type()).contiguous();
}

// g[j] = scale * (exp(x[j] - lse) - [j == target]) for one row, x in acc or in T, g in T (may
// alias x).
template <typename T, typename X>
void row_grad(const X* x, T* g, int64_t V, acc_t<T> lse, acc_t<T> scale, int64_t target) {
  using A = acc_t<T>;
  using IO = VecIO<T>;
  using XIO = VecIO<X>;
  using Vec = Vectorized<A>;
  constexpr int64_t K = Vec::size();
  const Vec vl(lse), vs(scale);
  // Read before the loop: g may alias x. Recomputed in acc so the -1 keeps its bits in T.
  const A gt = scale * (std::exp(A(x[target]) - lse) - A(1));
  int64_t j = 0;
  for (; j + K <= V; j += K) IO::store(g + j, vexp<A>(XIO::load(x + j) - vl) * vs);
  if (j < V) IO::store(g + j, vexp<A>(XIO::load(x + j, V - j) - vl) * vs, V - j);
  g[target] = T(gt);
}

// The same from e[j] = exp(x[j] - max) and sum(e), kept from the log-sum-exp pass: one exp per
// logit instead of two. g[j] = scale * (e[j] / sum - [j == target]).
template <typename T>
void row_grad_from_exp(const acc_t<T>* e, T* g, int64_t V, acc_t<T> sum, acc_t<T> scale, int64_t target) {
  using A = acc_t<T>;
  using IO = VecIO<T>;
  using Vec = Vectorized<A>;
  constexpr int64_t K = Vec::size();
  const A c = scale / sum;
  const Vec vc(c);
  int64_t j = 0;
  for (; j + K <= V; j += K) IO::store(g + j, Vec::loadu(e + j) * vc);
  if (j < V) IO::store(g + j, Vec::loadu(e + j, V - j) * vc, V - j);
  g[target] = T(scale * (e[target] / sum - A(1)));
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
  const int64_t N = d.N, V = d.V;
  const int64_t chunk = std::min(chunk_size, N);
  const bool want_grad = mode != Mode::kForward;
  const bool want_gh = want_grad && o.grad_hidden.defined();
  const bool want_gw = want_grad && o.grad_weight.defined();
  A* losses = static_cast<A*>(o.losses);
  A* lse = static_cast<A*>(o.lse);
  const A* gl = static_cast<const A*>(o.grad_losses);
  const auto acc_opts = hidden.options().dtype(c10::CppTypeToScalarType<A>::value);

  // Where bf16/fp16 dot products are native the GEMM's logits are in T (rounded, as F.linear's
  // are), and the row pass reads them as they are: no fp32 copy, half the buffer, and G is
  // written over them in place. Elsewhere (widened to fp32, or T = A) the logits are in A.
  const bool logits_in_t = !kSame && gemm::use_vnni<T>();
  at::Tensor logits_buf = at::empty({chunk, V}, logits_in_t ? hidden.options() : acc_opts);
  // softmax - onehot overwrites the logits in place. For bf16/fp16 logits in A, row r of G (in
  // T) sits at the start of logits row r's bytes (row stride V * sizeof(A) / sizeof(T) elements
  // of T): each row is converted front to back by one thread, writing only bytes it has read.
  constexpr int64_t kRatio = int64_t(sizeof(A) / sizeof(T));
  const int64_t ldg = logits_in_t ? V : V * kRatio;
  at::Tensor g_buf;   // [chunk, V] view of T with row stride ldg
  if (want_grad)
    g_buf = kSame || logits_in_t ? logits_buf : logits_buf.view(hidden.scalar_type()).narrow(1, 0, V);
  T* g = want_grad ? g_buf.mutable_data_ptr<T>() : nullptr;

  // The row pass over one chunk: lse and losses, then G; x points at the logits (A or T).
  auto row_pass = [&](const auto* logits, int64_t r0, int64_t rows) {
    const int64_t grain = std::max<int64_t>(1, 16384 / V);
    at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      std::vector<A> ex(mode == Mode::kFused ? V : 0);  // exp(x - max) of the current row
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = r0 + r;
        const auto* x = logits + r * V;
        const int64_t t = tgt[i];
        const bool ignored = t == ignore_index;
        if (mode == Mode::kFused && !ignored) {
          const A mx = row_max(x, V);
          if (!std::isinf(mx)) {
            const A sum = row_exp_sum<A>(x, V, A(1), mx, ex.data());
            const A l = mx + std::log(sum);
            lse[i] = l;
            losses[i] = l - A(x[t]);
            row_grad_from_exp<T>(ex.data(), g + r * ldg, V, sum, A(o.scale), t);
            continue;
          }
        }
        A l;
        if (mode == Mode::kBackward) {
          l = lse[i];
        } else {
          l = row_logsumexp(x, V);
          lse[i] = l;
          losses[i] = ignored ? A(0) : l - A(x[t]);
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
  };

  bool first_gw = true;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    const at::Tensor hc = hidden.narrow(0, r0, rows);
    at::Tensor lc = logits_buf.narrow(0, 0, rows);
    if (logits_in_t) {
      at::mm_out(lc, hc, weight.t());
      row_pass(lc.const_data_ptr<T>(), r0, rows);
    } else {
      gemm::mm_acc(hc, false, weight, true, lc, false);
      row_pass(lc.const_data_ptr<A>(), r0, rows);
    }
    if (!want_grad) continue;
    const at::Tensor gc = g_buf.narrow(0, 0, rows);
    if (want_gh) {
      // grad_hidden is in T: the GEMM writes it directly.
      at::Tensor ghc = o.grad_hidden.narrow(0, r0, rows);
      gemm::mm_acc(gc, false, weight, false, ghc, false);
    }
    if (want_gw) {
      gemm::mm_acc(gc, true, hc, false, o.grad_weight, !first_gw);
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
  const at::Tensor weight = gemm_weight(hidden, weight_);
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
  const at::Tensor weight = gemm_weight(hidden, weight_);
  const at::Tensor gl = grad_losses_.to(acc).contiguous();
  const at::Tensor lse = lse_.contiguous();
  at::Tensor grad_hidden = at::empty_like(hidden);
  // The first chunk's GEMM overwrites gw (beta = 0); it stays 0 only when there is no row.
  at::Tensor gw = d.N == 0 ? at::zeros({d.V, d.C}, hidden.options().dtype(acc))
                           : at::empty({d.V, d.C}, hidden.options().dtype(acc));
  if (d.N == 0) return {grad_hidden, gw.to(weight_.scalar_type())};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "linear_cross_entropy_backward_cpu", [&] {
    Outputs o;
    o.lse = const_cast<void*>(lse.const_data_ptr());
    o.grad_losses = gl.const_data_ptr();
    o.grad_hidden = grad_hidden;
    o.grad_weight = gw;
    run_chunks<scalar_t>(Mode::kBackward, hidden, weight, targets.const_data_ptr<int64_t>(), d, ignore_index,
                         chunk_size, o);
  });
  return {grad_hidden, gw.to(weight_.scalar_type())};
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
  const at::Tensor weight = gemm_weight(hidden, weight_);
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
  at::Tensor grad_weight = need_grad_weight ? gw.to(weight_.scalar_type()) : at::empty({0}, weight_.options());
  return {loss, grad_hidden, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("linear_cross_entropy", &lce_forward_cpu);
  m.impl("linear_cross_entropy_backward", &lce_backward_cpu);
  m.impl("linear_cross_entropy_and_grad", &lce_and_grad_cpu);
}

}  // namespace kr
