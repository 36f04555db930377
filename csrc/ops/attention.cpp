// Flash attention on the CPU: q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] in the layout a linear
// layer produces; GQA/MQA by head groups (query head h reads kv head h / (Hq / Hkv)).
//
// Forward: one work item = (batch, kv head, query block). The G = Hq / Hkv query heads of the
// group are packed together as the rows of one [qBlock * G, D] tile (row r = token r / G,
// head r % G), so each K/V tile is read once for the whole group and the GEMMs are G times
// taller. Online softmax over KV tiles; blocks above the causal diagonal are skipped; the
// logsumexp is saved for the backward. K and V are first laid out once (per batch, kv head and
// KV block) in the form the GEMMs read (VNNI panels for bf16/fp16, K^T otherwise), so no
// query block re-packs a KV tile. Memory: that O(B * Tk * Hkv * D) copy and per-work-item
// tiles, never Tq x Tk.
//
// Backward: Di = rowsum(dO * O) first, then one work item = (batch, kv head, KV chunk) that
// owns dK/dV of its KV blocks (no races) and recomputes P = exp(scale * q k^T - lse) tile by
// tile. dQ of each KV chunk goes to its own fp32 partial buffer; the partials are summed in
// chunk order afterwards. The chunking depends only on the shapes, so results do not depend
// on the thread count.
//
// Scheduling: work items are handed out heaviest first from an atomic counter inside
// at::parallel_for, so causal imbalance and noisy neighbours cost little. Each item is computed
// the same way whichever thread runs it (no cross-item reductions), so this is deterministic.
#include "ops/gemm.h"
#include "ops/softmax_rows.h"

#include <torch/version.h>

#include <atomic>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

namespace kr {
namespace {

constexpr const char* kOp = "attention";
constexpr const char* kOpBwd = "attention_backward";

using gemm::kPanel;
using gemm::round_up;

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols, in blocks that ATen's vec
// layer transposes in registers on AVX-512 (32x32 of 16-bit values, 16x16 of fp32; ragged edges
// masked) and element by element elsewhere. The scalar loop was about 40% of our own time in the
// bf16 backward. transpose_mxn's runtime-size form is used as checked against torch 2.13; older
// torches (pyproject allows 2.4) keep the plain blocked loop.
template <typename T>
inline void transpose(int64_t rows, int64_t cols, const T* src, int64_t ld_src, T* dst,
                      int64_t ld_dst) {
  constexpr int64_t kB = sizeof(T) == 2 ? 32 : 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kB)
    for (int64_t c0 = 0; c0 < cols; c0 += kB) {
      const int64_t r1 = std::min(rows, r0 + kB), c1 = std::min(cols, c0 + kB);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
      at::vec::transpose_mxn<T>(src + r0 * ld_src + c0, ld_src, dst + c0 * ld_dst + r0, ld_dst,
                                static_cast<int>(r1 - r0), static_cast<int>(c1 - c0));
#else
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
#endif
    }
}

// Runs fn(item, scratch) for item in [0, n), handing items out in order from a shared counter.
// Scratch is built once per worker with make_scratch().
template <typename T, typename MakeScratch, typename Fn>
void for_each_item(int64_t n, const MakeScratch& make_scratch, const Fn& fn) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    auto scratch = make_scratch();
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(i, scratch);
    }
    gemm::tile_done<T>();
  });
}

// Strided view of a [B, T, H, D] tensor whose last dim is dense.
template <typename T>
struct BTHD {
  const T* p;
  int64_t sb, st, sh;
  const T* row(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};

template <typename T>
BTHD<T> view_of(const at::Tensor& x) {
  return {x.const_data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2)};
}

// A tensor usable by the kernels: last dim dense and, for GEMM operands, rows of one head at a
// stride >= D. Anything else is copied to contiguous.
at::Tensor usable(const at::Tensor& x) {
  const int64_t D = x.size(3);
  const bool ok = (x.stride(3) == 1 || D <= 1) && (x.size(1) <= 1 || x.stride(1) >= D);
  return ok ? x : x.contiguous();
}

// Leading dimension of the rows (tokens) of one head; any value >= D works for a single row.
inline int64_t row_ld(const at::Tensor& x) {
  return x.size(1) <= 1 ? std::max<int64_t>(x.size(3), 1) : x.stride(1);
}

// Copies rows [t0, t0 + nt) of heads [h0, h0 + G) into dst [nt * G, ld] (row = t * G + g);
// columns [D, ld) are zeroed.
template <typename T>
inline void pack_rows(const BTHD<T>& src, int64_t b, int64_t t0, int64_t nt, int64_t h0,
                      int64_t G, int64_t D, T* dst, int64_t ld = -1) {
  if (ld < 0) ld = D;
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t g = 0; g < G; ++g) {
      T* row = dst + (t * G + g) * ld;
      std::memcpy(row, src.row(b, t0 + t, h0 + g), D * sizeof(T));
      if (ld > D) std::fill(row + D, row + ld, T(0));
    }
}

// ------------------------------------------------------------------------------------------
// Checks

struct Dims {
  int64_t B, Tq, Tk, Hq, Hkv, G, D;
};

Dims check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
               const char* op) {
  check_dim(q, 4, op, "q", "[B, Tq, Hq, D]");
  check_dim(k, 4, op, "k", "[B, Tk, Hkv, D]");
  check_dim(v, 4, op, "v", "[B, Tk, Hkv, D]");
  check_cpu(q, op, "q");
  check_cpu(k, op, "k");
  check_cpu(v, op, "v");
  check_float(q, op, "q");
  check_same_dtype(k, "k", q, "q", op);
  check_same_dtype(v, "v", q, "q", op);
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), op, ": k and v must have the same shape [B, Tk, Hkv, D], got k ",
                    shape_str(k), " and v ", shape_str(v));
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Tk = k.size(1), Hkv = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B, op, ": k/v must be [B, Tk, Hkv, D] with B = ", B,
                    " as in q ", shape_str(q), ", got ", shape_str(k));
  TORCH_CHECK_VALUE(k.size(3) == D, op, ": head_dim of k/v (", k.size(3),
                    ") must equal head_dim of q (", D, "): q ", shape_str(q), ", k ", shape_str(k));
  TORCH_CHECK_VALUE(D >= 1, op, ": head_dim must be >= 1, got q ", shape_str(q));
  TORCH_CHECK_VALUE(Hkv >= 1 && Hq % Hkv == 0, op, ": the number of query heads Hq = ", Hq,
                    " must be a multiple of the number of kv heads Hkv = ", Hkv, " (q ",
                    shape_str(q), ", k ", shape_str(k), ")");
  TORCH_CHECK_VALUE(!causal || Tq == Tk, op, ": causal=True needs Tq == Tk, got Tq = ", Tq,
                    " and Tk = ", Tk, " (use causal=False for Tq != Tk)");
  return {B, Tq, Tk, Hq, Hkv, Hq / Hkv, D};
}

double resolve_scale(std::optional<double> scale, int64_t D) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D));
}

// Block sizes. Rows of a tile are (token, head-of-group) pairs: aim at ~kRows rows whatever G.
struct Blocks {
  int64_t qb;  // query tokens per block
  int64_t kb;  // kv tokens per block
};

Blocks forward_blocks(const Dims& d) {
  const int64_t rows = d.Tq >= 768 ? 256 : (d.Tq >= 192 ? 128 : 64);
  // Query tokens per block: a multiple of 16, so a tile has a multiple of 16 rows (whatever G)
  // and the brgemm ukernel runs on whole AMX/AVX-512 row blocks (a tail block measured ~10%
  // slower overall at G = 3).
  int64_t qb = std::max<int64_t>(1, rows / (d.G * 16)) * 16;
  qb = std::min(qb, std::max<int64_t>(d.Tq, 1));
  const int64_t kb = std::min<int64_t>(256, std::max<int64_t>(d.Tk, 1));
  return {qb, kb};
}

Blocks backward_blocks(const Dims& d) {
  int64_t qb = std::max<int64_t>(1, 128 / d.G);
  qb = std::min(qb, std::max<int64_t>(d.Tq, 1));
  const int64_t kb = std::min<int64_t>(128, std::max<int64_t>(d.Tk, 1));
  return {qb, kb};
}

// ------------------------------------------------------------------------------------------
// Forward

// K and V laid out once, before the main loop, in the form the forward's GEMMs read. Every
// query block of a (batch, kv head) reads the same KV tiles, so preparing them per work item
// (as before) re-transposed and re-packed each tile Tq / qb times; this costs one pass over K
// and V and an O(B * Tk * Hkv * D) buffer (never Tq x Tk). One block per (b * Hkv + hk, j):
//  - VNNI (bf16/fp16 through oneDNN's brgemm ukernel): K^T as panels of kPanel keys
//    [Dp, kPanel] (Dp = D rounded up to even: VNNI pairs rows), so S = q k^T is one brgemm per
//    panel; then V as panels of kPanel columns [round_up(nb, 2), kPanel], so O += P V is one
//    brgemm per panel. The padding is zeros: padded columns of S are exact zeros (never read)
//    and padded rows of V meet the zeros row_exp_sum writes after each row's valid keys.
//  - otherwise: K^T [D, nb] (ld nb) for mm(); V is read in place.
template <typename T>
struct ForwardKV {
  bool vnni = false;
  int64_t kb = 0, nkb = 0;           // KV block length and count
  int64_t Dp = 0, kbe = 0;           // VNNI: padded head dim and padded block length
  int64_t kpanels = 0, vpanels = 0;  // VNNI: panels per block of K^T and of V
  int64_t stride = 0;                // elements per block
  at::Tensor buf;

  const T* k_block(int64_t bh, int64_t j) const {
    return buf.template const_data_ptr<T>() + (bh * nkb + j) * stride;
  }
  // VNNI only: the V panels follow the K^T panels of the block.
  const T* v_block(int64_t bh, int64_t j) const { return k_block(bh, j) + kpanels * Dp * kPanel; }
};

template <typename T>
ForwardKV<T> prepare_forward_kv(const at::Tensor& k, const at::Tensor& v, const Dims& d,
                                int64_t kb) {
  ForwardKV<T> p;
  p.vnni = gemm::use_vnni<T>();
  p.kb = kb;
  p.nkb = (d.Tk + kb - 1) / kb;
  const int64_t D = d.D, BH = d.B * d.Hkv;
  if (p.vnni) {
    p.Dp = round_up(D, 2);
    p.kbe = round_up(kb, 2);
    p.kpanels = (kb + kPanel - 1) / kPanel;
    p.vpanels = (D + kPanel - 1) / kPanel;
    p.stride = p.kpanels * p.Dp * kPanel + p.vpanels * p.kbe * kPanel;
  } else {
    p.stride = D * kb;
  }
  p.buf = at::empty({BH * p.nkb * p.stride}, k.options());
  const BTHD<T> K = view_of<T>(k), Vv = view_of<T>(v);
  const int64_t ldk = row_ld(k);
  T* base = p.buf.template mutable_data_ptr<T>();
  at::parallel_for(0, BH * p.nkb, 1, [&](int64_t s, int64_t e) {
    std::vector<T> tmp(p.vnni ? std::max(p.Dp, p.kbe) * kPanel : 0);
    for (int64_t x = s; x < e; ++x) {
      const int64_t bh = x / p.nkb, j = x % p.nkb, b = bh / d.Hkv, hk = bh % d.Hkv;
      const int64_t n0 = j * kb, nb = std::min(kb, d.Tk - n0);
      T* dst = base + x * p.stride;
      if (!p.vnni) {
        transpose(nb, D, K.row(b, n0, hk), ldk, dst, nb);
        continue;
      }
      // Panels past the block's last key (a short last block) are never read.
      for (int64_t c0 = 0; c0 < nb; c0 += kPanel) {
        std::fill(tmp.begin(), tmp.begin() + p.Dp * kPanel, T(0));
        transpose(std::min(kPanel, nb - c0), D, K.row(b, n0 + c0, hk), ldk, tmp.data(), kPanel);
        gemm::pack_vnni(p.Dp, kPanel, tmp.data(), kPanel, dst + (c0 / kPanel) * p.Dp * kPanel, kPanel);
      }
      const int64_t nbe = round_up(nb, 2);
      T* vdst = dst + p.kpanels * p.Dp * kPanel;
      for (int64_t c0 = 0; c0 < D; c0 += kPanel) {
        const int64_t w = std::min(kPanel, D - c0);
        std::fill(tmp.begin(), tmp.begin() + nbe * kPanel, T(0));
        for (int64_t r = 0; r < nb; ++r)
          std::memcpy(tmp.data() + r * kPanel, Vv.row(b, n0 + r, hk) + c0, w * sizeof(T));
        gemm::pack_vnni(nbe, kPanel, tmp.data(), kPanel, vdst + (c0 / kPanel) * p.kbe * kPanel, kPanel);
      }
    }
  });
  return p;
}

template <typename T>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    at::Tensor& lse, const Dims& d, bool causal, double scale_d) {
  using A = acc_t<T>;
  constexpr bool kReduced = !std::is_same_v<T, A>;
  const Blocks bl = forward_blocks(d);
  const int64_t G = d.G, D = d.D, qb = bl.qb, kb = bl.kb;
  const int64_t M = qb * G;
  const int64_t nq = (d.Tq + qb - 1) / qb;
  const int64_t BH = d.B * d.Hkv;
  const A scale = static_cast<A>(scale_d);
  const ForwardKV<T> kv = prepare_forward_kv<T>(k, v, d, kb);
  const bool vnni = kv.vnni;
  // Leading dimensions of the per-item tiles: q rows, scores S and P, output accumulator O.
  // The VNNI path pads them to whole panels (and an even head dim).
  const int64_t ldq = vnni ? kv.Dp : D;
  const int64_t lds = (vnni ? kv.kpanels * kPanel : kb);
  const int64_t ldo = vnni ? kv.vpanels * kPanel : D;
  const BTHD<T> Q = view_of<T>(q), Vv = view_of<T>(v);
  const int64_t ldv = row_ld(v);
  T* op = out.mutable_data_ptr<T>();
  A* lp = lse.mutable_data_ptr<A>();
  const A ninf = -std::numeric_limits<A>::infinity();

  struct Scratch {
    std::vector<T> qp, pr;
    std::vector<A> s, o, m, l;
    gemm::Scratch<T> ws;
  };
  auto make = [&] {
    Scratch s;
    s.qp.resize(M * ldq);
    s.pr.resize(kReduced ? M * lds : 0);
    s.s.resize(M * lds);
    s.o.resize(M * ldo);
    s.m.resize(M);
    s.l.resize(M);
    return s;
  };
  // Heaviest query blocks (the last ones, when causal) first.
  for_each_item<T>(BH * nq, make, [&](int64_t item, Scratch& sc) {
    const int64_t qi = nq - 1 - item / BH, bh = item % BH;
    const int64_t b = bh / d.Hkv, hk = bh % d.Hkv;
    const int64_t t0 = qi * qb, nt = std::min(qb, d.Tq - t0), rows = nt * G;
    T* qp = sc.qp.data();
    A* S = sc.s.data();
    T* P = kReduced ? sc.pr.data() : reinterpret_cast<T*>(S);  // same ld: lds
    A* O = sc.o.data();
    A* mx = sc.m.data();
    A* sum = sc.l.data();
    pack_rows(Q, b, t0, nt, hk * G, G, D, qp, ldq);
    std::fill(O, O + rows * ldo, A(0));
    std::fill(mx, mx + rows, ninf);
    std::fill(sum, sum + rows, A(0));
    const int64_t nkeys = causal ? std::min(t0 + nt, d.Tk) : d.Tk;
    for (int64_t j = 0; j * kb < nkeys; ++j) {
      const int64_t n0 = j * kb, nb = std::min(kb, nkeys - n0);
      // P's columns up to np are written (zeros past the valid keys): the VNNI GEMM reads an
      // even number of them.
      const int64_t np = vnni ? round_up(nb, 2) : nb;
      const T* kblk = kv.k_block(bh, j);
      if (vnni) {
        for (int64_t c0 = 0; c0 < nb; c0 += kPanel)
          gemm::panel_mm<T>(rows, kv.Dp, qp, ldq, kblk + (c0 / kPanel) * kv.Dp * kPanel, false, S + c0, lds);
      } else {
        // K^T of a block has ld = the block's full length.
        gemm::tile_mm<T>(rows, nb, D, qp, ldq, kblk, std::min(kb, d.Tk - n0), false, S, lds, sc.ws);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = t0 + r / G;
        const int64_t valid = causal ? std::min(nb, std::max<int64_t>(t - n0 + 1, 0)) : nb;
        A* sr = S + r * lds;
        T* pr = P + r * lds;
        if (valid == 0) {
          std::fill(pr, pr + np, T(0));
          continue;
        }
        const A new_m = std::max(mx[r], row_max<A>(sr, valid, scale));
        // 0 for the first block of the row; 1 (no exp, no rescale) while the max holds.
        const A alpha = new_m == mx[r] ? A(1) : std::exp(mx[r] - new_m);
        const A s_blk = row_exp_sum<T>(sr, valid, scale, new_m, pr, np);
        sum[r] = sum[r] * alpha + s_blk;
        mx[r] = new_m;
        if (alpha != A(1)) {
          using V = Vectorized<A>;
          at::vec::map([alpha](V x) { return x * V(alpha); }, O + r * ldo, O + r * ldo, D);
        }
      }
      if (vnni) {
        const T* vblk = kv.v_block(bh, j);
        for (int64_t c0 = 0; c0 < D; c0 += kPanel)
          gemm::panel_mm<T>(rows, np, P, lds, vblk + (c0 / kPanel) * kv.kbe * kPanel, true, O + c0, ldo);
      } else {
        gemm::tile_mm<T>(rows, D, nb, P, lds, Vv.row(b, n0, hk), ldv, true, O, ldo, sc.ws);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = t0 + r / G, h = hk * G + r % G;
      const A inv = sum[r] > A(0) ? A(1) / sum[r] : A(0);
      T* orow = op + ((b * d.Tq + t) * d.Hq + h) * D;
      using V = Vectorized<A>;
      using IO = VecIO<T>;
      constexpr int64_t KV = V::size();
      const V vinv(inv);
      const A* orr = O + r * ldo;
      int64_t i = 0;
      for (; i + KV <= D; i += KV) IO::store(orow + i, V::loadu(orr + i) * vinv);
      if (i < D) IO::store(orow + i, V::loadu(orr + i, D - i) * vinv, D - i);
      lp[(b * d.Hq + h) * d.Tq + t] = sum[r] > A(0) ? mx[r] + std::log(sum[r]) : ninf;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_, const at::Tensor& k_,
                                                 const at::Tensor& v_, bool causal,
                                                 std::optional<double> scale) {
  const Dims d = check_qkv(q_, k_, v_, causal, kOp);
  const auto acc_dtype = at::toOpMathType(q_.scalar_type());
  at::Tensor out = at::empty({d.B, d.Tq, d.Hq, d.D}, q_.options());
  at::Tensor lse = at::empty({d.B, d.Hq, d.Tq}, q_.options().dtype(acc_dtype));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor q = usable(q_), k = usable(k_), v = usable(v_);
  const double sc = resolve_scale(scale, d.D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attention_cpu", [&] {
    forward_kernel<scalar_t>(q, k, v, out, lse, d, causal, sc);
  });
  return {out, lse};
}

// ------------------------------------------------------------------------------------------
// Backward

// KV block ranges of the chunks: contiguous, balanced by work (causal blocks see fewer queries).
std::vector<int64_t> chunk_bounds(int64_t nkb, int64_t nchunks, int64_t kb, int64_t Tq, bool causal) {
  std::vector<int64_t> w(nkb);
  double total = 0;
  for (int64_t j = 0; j < nkb; ++j) {
    w[j] = causal ? std::max<int64_t>(Tq - j * kb, 1) : 1;
    total += static_cast<double>(w[j]);
  }
  std::vector<int64_t> bounds{0};
  double acc = 0;
  for (int64_t j = 0; j < nkb; ++j) {
    acc += static_cast<double>(w[j]);
    const int64_t c = static_cast<int64_t>(bounds.size());
    const bool room = nkb - (j + 1) >= nchunks - c;  // blocks left for the remaining chunks
    if (c < nchunks && j + 1 < nkb && (acc >= total * c / nchunks || !room)) bounds.push_back(j + 1);
  }
  bounds.push_back(nkb);
  return bounds;
}

// Chunks of KV blocks per (batch, kv head): enough work items for a multi-core machine, fixed
// by the shapes alone.
constexpr int64_t kMinBackwardItems = 8;

template <typename T>
void backward_kernel(const at::Tensor& go, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& o, const at::Tensor& lse,
                     at::Tensor& gq, at::Tensor& gk, at::Tensor& gv, const Dims& d, bool causal,
                     double scale_d) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  using IO = VecIO<T>;
  constexpr int64_t KV = V::size();
  constexpr bool kReduced = !std::is_same_v<T, A>;
  const Blocks bl = backward_blocks(d);
  const int64_t G = d.G, D = d.D, qb = bl.qb, kb = bl.kb, M = qb * G;
  const int64_t BH = d.B * d.Hkv;
  const A scale = static_cast<A>(scale_d);
  const BTHD<T> Q = view_of<T>(q), Kt = view_of<T>(k), Vt = view_of<T>(v), GO = view_of<T>(go),
                O = view_of<T>(o);
  const int64_t ldk = row_ld(k), ldv = row_ld(v);
  const A* lsep = lse.const_data_ptr<A>();

  // Di = rowsum(dO * O), laid out [B, Hkv, Tq, G] like the packed rows.
  at::Tensor di = at::empty({d.B, d.Hkv, d.Tq, G}, lse.options());
  A* dip = di.mutable_data_ptr<A>();
  at::parallel_for(0, d.B * d.Tq, std::max<int64_t>(1, 4096 / std::max<int64_t>(d.Hq * D, 1)),
                   [&](int64_t s, int64_t e) {
    for (int64_t bt = s; bt < e; ++bt) {
      const int64_t b = bt / d.Tq, t = bt % d.Tq;
      for (int64_t h = 0; h < d.Hq; ++h) {
        const T* a = GO.row(b, t, h);
        const T* c = O.row(b, t, h);
        V acc(0);
        int64_t i = 0;
        for (; i + KV <= D; i += KV) acc = at::vec::fmadd(IO::load(a + i), IO::load(c + i), acc);
        A r = at::vec::vec_reduce_all<A>([](V& x, V& y) { return x + y; }, acc);
        for (; i < D; ++i) r += A(a[i]) * A(c[i]);
        dip[((b * d.Hkv + h / G) * d.Tq + t) * G + h % G] = r;
      }
    }
  });

  const int64_t nkb = (d.Tk + kb - 1) / kb;
  const int64_t nchunks = std::max<int64_t>(
      1, std::min<int64_t>(nkb, (kMinBackwardItems + BH - 1) / BH));
  const std::vector<int64_t> bounds = chunk_bounds(nkb, nchunks, kb, d.Tq, causal);
  // dQ partials [chunk, B, Hkv, Tq, G, D] (fp32); chunk c writes rows from q_lo[c] on.
  const int64_t part_stride = BH * d.Tq * G * D;
  at::Tensor part = at::empty({nchunks * part_stride}, lse.options());
  A* partp = part.mutable_data_ptr<A>();
  std::vector<int64_t> q_lo(nchunks);
  for (int64_t c = 0; c < nchunks; ++c)
    q_lo[c] = causal ? std::min(d.Tq, (bounds[c] * kb) / qb * qb) : 0;

  T* gkp = gk.mutable_data_ptr<T>();
  T* gvp = gv.mutable_data_ptr<T>();

  struct Scratch {
    std::vector<T> qp, dop, qt, dot, kt, vt, pr, dsr;
    std::vector<A> s, dp, dk, dv;
    gemm::PackedB<T> ktp, vtp, kpp;  // K^T, V^T and K of the KV block, packed once for its query blocks
    gemm::Scratch<T> ws;
  };
  auto make = [&] {
    Scratch s;
    s.qp.resize(M * D);
    s.dop.resize(M * D);
    s.qt.resize(D * M);
    s.dot.resize(D * M);
    s.kt.resize(D * kb);
    s.vt.resize(D * kb);
    s.pr.resize(kReduced ? M * kb : 0);
    s.dsr.resize(kReduced ? M * kb : 0);
    s.s.resize(M * kb);
    s.dp.resize(M * kb);
    s.dk.resize(kb * D);
    s.dv.resize(kb * D);
    return s;
  };
  // Items: chunk-major, so the heavy first chunks of causal attention start first.
  for_each_item<T>(nchunks * BH, make, [&](int64_t item, Scratch& sc) {
    const int64_t c = item / BH, bh = item % BH, b = bh / d.Hkv, hk = bh % d.Hkv;
    A* dq = partp + c * part_stride + bh * d.Tq * G * D;  // [Tq, G, D]
    std::fill(dq + q_lo[c] * G * D, dq + d.Tq * G * D, A(0));
    const A* lse_bh = lsep + (b * d.Hq + hk * G) * d.Tq;  // lse[b, hk*G + g, t] at g*Tq + t
    const A* di_bh = dip + bh * d.Tq * G;
    T* qp = sc.qp.data();
    T* dop = sc.dop.data();
    A* S = sc.s.data();
    A* dP = sc.dp.data();
    T* P = kReduced ? sc.pr.data() : reinterpret_cast<T*>(S);
    T* dS = kReduced ? sc.dsr.data() : reinterpret_cast<T*>(dP);
    A* dK = sc.dk.data();
    A* dV = sc.dv.data();
    for (int64_t j = bounds[c]; j < bounds[c + 1]; ++j) {
      const int64_t n0 = j * kb, nb = std::min(kb, d.Tk - n0);
      const T* kp = Kt.row(b, n0, hk);
      const T* vp = Vt.row(b, n0, hk);
      // dK^T and dV^T [D, nb] accumulate here.
      std::fill(dK, dK + nb * D, A(0));
      std::fill(dV, dV + nb * D, A(0));
      T* kt = sc.kt.data();
      T* vt = sc.vt.data();
      T* qt = sc.qt.data();
      T* dot = sc.dot.data();
      transpose(nb, D, kp, ldk, kt, nb);
      transpose(nb, D, vp, ldv, vt, nb);
      sc.ktp.pack(D, nb, kt, nb);
      sc.vtp.pack(D, nb, vt, nb);
      sc.kpp.pack(nb, D, kp, ldk);
      const int64_t qstart = causal ? n0 / qb : 0;
      for (int64_t qi = qstart; qi * qb < d.Tq; ++qi) {
        const int64_t t0 = qi * qb, nt = std::min(qb, d.Tq - t0), rows = nt * G;
        // Causal: the block's last query sees keys up to t0 + nt - 1, so the columns past that
        // (rounded up to whole 16-column GEMM blocks) are never computed, read or written.
        // t0 + nt > n0 for every block from qstart on.
        const int64_t ncols = causal ? std::min(nb, gemm::round_up(t0 + nt - n0, 16)) : nb;
        pack_rows(Q, b, t0, nt, hk * G, G, D, qp);
        pack_rows(GO, b, t0, nt, hk * G, G, D, dop);
        transpose(rows, D, qp, D, qt, rows);
        transpose(rows, D, dop, D, dot, rows);
        gemm::tile_mm<T>(rows, qp, D, sc.ktp, false, S, nb, sc.ws, ncols);
        gemm::tile_mm<T>(rows, dop, D, sc.vtp, false, dP, nb, sc.ws, ncols);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t tl = r / G, g = r % G, t = t0 + tl;
          const int64_t valid = causal ? std::min(nb, std::max<int64_t>(t - n0 + 1, 0)) : nb;
          A* sr = S + r * nb;
          T* pr = P + r * nb;
          A* dpr = dP + r * nb;
          T* dsr = dS + r * nb;
          row_exp_sum<T>(sr, valid, scale, lse_bh[g * d.Tq + t], pr, ncols);
          // dS = P * (dP - Di); P is re-read from its stored (possibly rounded) values so
          // dV and dS see the same P.
          const V vdi(di_bh[t * G + g]);
          int64_t i = 0;
          for (; i + KV <= valid; i += KV)
            IO::store(dsr + i, IO::load(pr + i) * (V::loadu(dpr + i) - vdi));
          if (i < valid) {
            const int64_t n = valid - i;
            IO::store(dsr + i, IO::load(pr + i, n) * (V::loadu(dpr + i, n) - vdi), n);
          }
          std::fill(dsr + valid, dsr + ncols, T(0));
        }
        gemm::tile_mm<T>(D, ncols, rows, dot, rows, P, nb, true, dV, nb, sc.ws);
        gemm::tile_mm<T>(D, ncols, rows, qt, rows, dS, nb, true, dK, nb, sc.ws);
        gemm::tile_mm<T>(rows, dS, nb, sc.kpp, true, dq + t0 * G * D, D, sc.ws, /*n=*/-1, /*k=*/ncols);
      }
      for (int64_t r = 0; r < nb; ++r) {
        T* gkr = gkp + ((b * d.Tk + n0 + r) * d.Hkv + hk) * D;
        T* gvr = gvp + ((b * d.Tk + n0 + r) * d.Hkv + hk) * D;
        for (int64_t i = 0; i < D; ++i) {
          gkr[i] = T(dK[i * nb + r] * scale);
          gvr[i] = T(dV[i * nb + r]);
        }
      }
    }
  });

  // grad_q[b, t, h] = scale * sum over chunks (in chunk order) of the partials.
  T* gqp = gq.mutable_data_ptr<T>();
  at::parallel_for(0, BH * d.Tq, std::max<int64_t>(1, 8192 / std::max<int64_t>(G * D, 1)),
                   [&](int64_t s, int64_t e) {
    std::vector<A> acc(G * D);
    for (int64_t x = s; x < e; ++x) {
      const int64_t bh = x / d.Tq, t = x % d.Tq, b = bh / d.Hkv, hk = bh % d.Hkv;
      const A* p0 = partp + (bh * d.Tq + t) * G * D;
      std::copy(p0, p0 + G * D, acc.begin());
      for (int64_t c = 1; c < nchunks; ++c) {
        if (t < q_lo[c]) break;  // q_lo is non-decreasing
        const A* pc = p0 + c * part_stride;
        at::vec::map2([](V a, V bb) { return a + bb; }, acc.data(), acc.data(), pc, G * D);
      }
      T* dst = gqp + ((b * d.Tq + t) * d.Hq + hk * G) * D;  // the G heads are contiguous
      const V vs(scale);
      int64_t i = 0;
      for (; i + KV <= G * D; i += KV) IO::store(dst + i, V::loadu(acc.data() + i) * vs);
      if (i < G * D) IO::store(dst + i, V::loadu(acc.data() + i, G * D - i) * vs, G * D - i);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, bool causal, std::optional<double> scale) {
  const Dims d = check_qkv(q_, k_, v_, causal, kOpBwd);
  TORCH_CHECK_VALUE(grad_out_.sizes() == q_.sizes(), kOpBwd, ": grad_out must be [B, Tq, Hq, D] = ",
                    shape_str(q_), " like q, got ", shape_str(grad_out_));
  TORCH_CHECK_VALUE(out_.sizes() == q_.sizes(), kOpBwd, ": out must be [B, Tq, Hq, D] = ",
                    shape_str(q_), " like q, got ", shape_str(out_));
  check_cpu(grad_out_, kOpBwd, "grad_out");
  check_cpu(out_, kOpBwd, "out");
  check_cpu(lse_, kOpBwd, "lse");
  check_same_dtype(grad_out_, "grad_out", q_, "q", kOpBwd);
  check_same_dtype(out_, "out", q_, "q", kOpBwd);
  const auto acc_dtype = at::toOpMathType(q_.scalar_type());
  TORCH_CHECK_VALUE(lse_.dim() == 3 && lse_.size(0) == d.B && lse_.size(1) == d.Hq &&
                        lse_.size(2) == d.Tq && lse_.scalar_type() == acc_dtype,
                    kOpBwd, ": lse must be the [B, Hq, Tq] = [", d.B, ", ", d.Hq, ", ", d.Tq, "] ",
                    acc_dtype, " tensor saved by the forward, got ", shape_str(lse_), " ",
                    lse_.scalar_type());
  at::Tensor gq = at::empty({d.B, d.Tq, d.Hq, d.D}, q_.options());
  at::Tensor gk = at::empty({d.B, d.Tk, d.Hkv, d.D}, k_.options());
  at::Tensor gv = at::empty({d.B, d.Tk, d.Hkv, d.D}, v_.options());
  if (gq.numel() == 0 || gk.numel() == 0) {
    gq.zero_();
    gk.zero_();
    gv.zero_();
    return {gq, gk, gv};
  }
  const at::Tensor q = usable(q_), k = usable(k_), v = usable(v_), go = usable(grad_out_),
                   o = usable(out_), lse = lse_.contiguous();
  const double sc = resolve_scale(scale, d.D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(go, q, k, v, o, lse, gq, gk, gv, d, causal, sc);
  });
  return {gq, gk, gv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace kr
