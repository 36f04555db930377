// The one GEMM layer of the CPU kernels. Everything goes through oneDNN by way of ATen, which
// picks its code by the ISA the CPU reports (AMX, AVX-512 with or without BF16/FP16 dot
// products, AVX2, NEON), never by vendor:
//
//  - tile GEMMs inside a kernel's work item (attention): gemm::tile_mm on raw row-major
//    pointers, C in the accumulation type. fp32 runs on cpublas::brgemm; bf16/fp16 run on
//    brgemm's VNNI ukernel (fp32 accumulation) wherever the CPU has native bf16/fp16 dot
//    products (AMX, or AVX512-BF16 / AVX512-FP16 without AMX) and oneDNN's ISA limit allows
//    them; elsewhere the operands are widened to fp32. Call tile_done<T>() when a worker ends.
//  - whole-matrix GEMMs (linear_cross_entropy): gemm::mm_acc on tensors, threaded by oneDNN /
//    the BLAS. bf16/fp16 use at::mm in that dtype (oneDNN's matmul: fp32 accumulation inside,
//    the product rounded to the dtype as F.linear does) and accumulate in fp32 outside it,
//    except a large a^T @ b into fp32 (the LM head's weight gradient), which runs on the VNNI
//    brgemm straight into c, threaded over rows of c (no 16-bit product to round, allocate and
//    add; see mm_acc for the size rule); where bf16/fp16 dot
//    products are not native, the operands are widened and multiplied in fp32.
//    (MKL's cblas_gemm_bf16bf16f32 is fast only with AMX, a third of oneDNN's speed elsewhere;
//    cpublas::gemm's bf16 -> fp32 overload is not exported by libtorch.)
#pragma once

#include "ops/common.h"

#include <ATen/native/CPUBlas.h>

#include <cstring>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kr::gemm {

// Columns per VNNI panel of B: what one brgemm call reads.
constexpr int64_t kPanel = 64;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Whether bf16 / fp16 tile GEMMs run on the VNNI brgemm ukernel on this machine, under the
// oneDNN ISA limit of this process (ONEDNN_MAX_CPU_ISA). Decided once; see gemm.cpp.
bool vnni_available(at::ScalarType dtype);

template <typename T>
inline bool use_vnni() {
  if constexpr (std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>) {
    static const bool ok = vnni_available(c10::CppTypeToScalarType<T>::value);
    return ok;
  }
  return false;
}

// Interleaves n values of rows r0 and r1 into d (d[2i] = r0[i], d[2i + 1] = r1[i]): one pair
// of rows of a VNNI panel. Vectorised: packing, not the dot products, bounded the bf16 tile
// GEMMs on AMX (attention's backward packs B operands of ~10K values per 1M-MAC GEMM).
template <typename T>
inline void interleave_rows(int64_t n, const T* r0, const T* r1, T* d) {
  int64_t i = 0;
#if defined(__AVX512BW__)
  if constexpr (sizeof(T) == 2) {
    const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i hi_idx = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (; i + 32 <= n; i += 32) {
      const __m512i a = _mm512_loadu_si512(r0 + i), b = _mm512_loadu_si512(r1 + i);
      const __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
      _mm512_storeu_si512(d + 2 * i, _mm512_permutex2var_epi64(lo, lo_idx, hi));
      _mm512_storeu_si512(d + 2 * i + 32, _mm512_permutex2var_epi64(lo, hi_idx, hi));
    }
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 2) {
    for (; i + 16 <= n; i += 16) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + i));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + i));
      const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 2 * i), _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 2 * i + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
  }
#endif
  for (; i < n; ++i) {
    d[2 * i] = r0[i];
    d[2 * i + 1] = r1[i];
  }
}

// Packs B[K, N] (row-major, ld ldb) into the VNNI layout brgemm reads for 16-bit types:
// dst[(k / 2) * 2 * ldd + 2 * n + k % 2], ldd >= N columns; rows past K (up to the even
// round_up(K, 2)) and columns [N, ldd) are zero.
template <typename T>
inline void pack_vnni(int64_t K, int64_t N, const T* B, int64_t ldb, T* dst, int64_t ldd) {
  const int64_t Kp = round_up(K, 2);
  std::vector<T> zeros;
  for (int64_t k = 0; k < Kp; k += 2) {
    T* d = dst + k * ldd;
    const T* r0 = B + k * ldb;
    const T* r1 = r0 + ldb;
    if (k + 1 >= K) {
      zeros.assign(N, T(0));
      r1 = zeros.data();
    }
    interleave_rows(N, r0, r1, d);
    std::fill(d + 2 * N, d + 2 * ldd, T(0));
  }
}

// C[M, kPanel] (ld ldc, fp32) (+)= A[M, K] (ld lda) @ one VNNI panel [K, kPanel] (K even).
template <typename T>
inline void panel_mm(int64_t M, int64_t K, const T* A, int64_t lda, const T* panel, bool accumulate,
                     acc_t<T>* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>) {
    at::native::cpublas::brgemm(M, kPanel, K, lda, kPanel, ldc, accumulate, A, panel, C, /*is_vnni=*/true);
  } else {
    TORCH_INTERNAL_ASSERT(false, "gemm::panel_mm: VNNI panels exist for 16-bit types only");
  }
}

// C[M, w] (fp32, ld ldc) (+)= A[M, K] (ld lda) @ one VNNI panel [K, wp] (wp = round_up(w, 16),
// K even), the panel's pairs of rows ldp >= wp columns apart (the first w used). brgemm writes wp
// columns, so a ragged panel (wp > w) goes through buf [M, wp].
template <typename T>
inline void vnni_panel_mm(int64_t M, int64_t w, int64_t K, const T* A, int64_t lda, const T* panel, int64_t ldp,
                          bool accumulate, float* C, int64_t ldc, std::vector<float>& buf) {
  const int64_t wp = round_up(w, 16);
  if (wp == w) {
    at::native::cpublas::brgemm(M, wp, K, lda, ldp, ldc, accumulate, A, panel, C, true);
    return;
  }
  buf.resize(M * wp);
  if (accumulate)
    for (int64_t i = 0; i < M; ++i) std::memcpy(buf.data() + i * wp, C + i * ldc, w * sizeof(float));
  at::native::cpublas::brgemm(M, wp, K, lda, ldp, wp, accumulate, A, panel, buf.data(), true);
  for (int64_t i = 0; i < M; ++i) std::memcpy(C + i * ldc, buf.data() + i * wp, w * sizeof(float));
}

// B [K, N] made ready once for several tile GEMMs (attention's backward multiplies each K/V
// tile by every query block): on the VNNI path its panels of kPanel columns, packed
// ([Kp / 2][wp][2], K padded to even, columns to a multiple of 16, as oneDNN needs), panel p at
// p * Kp * kPanel; otherwise B is read where it is.
template <typename T>
struct PackedB {
  const T* b = nullptr;
  int64_t ldb = 0, K = 0, N = 0;
  bool vnni = false;
  std::vector<T> panels;

  void pack(int64_t K_, int64_t N_, const T* b_, int64_t ldb_) {
    b = b_, ldb = ldb_, K = K_, N = N_;
    vnni = use_vnni<T>() && K > 0;
    if (!vnni) return;
    const int64_t Kp = round_up(K, 2), np = (N + kPanel - 1) / kPanel;
    panels.resize(np * Kp * kPanel);
    for (int64_t p = 0; p < np; ++p) {
      const int64_t n0 = p * kPanel, w = std::min(kPanel, N - n0);
      pack_vnni(K, w, b + n0, ldb, panels.data() + p * Kp * kPanel, round_up(w, 16));
    }
  }
};

// Per-worker buffers of tile_mm.
template <typename T>
struct Scratch {
  std::vector<T> a;
  std::vector<float> c, af, bf;
  PackedB<T> pb;
};

template <typename T>
inline void tile_mm(int64_t M, const T* A, int64_t lda, const PackedB<T>& B, bool accumulate, acc_t<T>* C,
                    int64_t ldc, Scratch<T>& ws, int64_t n = -1, int64_t k = -1);

// C[M, N] (row-major, ldc, accumulation type) = A[M, K] @ B[K, N] (+ C if accumulate), A and B
// row-major with leading dimensions lda, ldb. bf16/fp16 on the VNNI path: B is packed (see
// PackedB); an odd K adds a zero column to A. float64 (gradcheck) goes through at::mm.
template <typename T>
inline void tile_mm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                    bool accumulate, acc_t<T>* C, int64_t ldc, Scratch<T>& ws) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, acc_t<T>(0));
    return;
  }
  if constexpr (std::is_same_v<T, double>) {
    auto opt = at::TensorOptions().dtype(at::kDouble);
    at::Tensor a = at::from_blob(const_cast<double*>(A), {M, K}, {lda, 1}, opt);
    at::Tensor b = at::from_blob(const_cast<double*>(B), {K, N}, {ldb, 1}, opt);
    at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opt);
    if (accumulate) {
      c.addmm_(a, b);
    } else {
      at::mm_out(c, a, b);
    }
  } else if constexpr (std::is_same_v<T, float>) {
    at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/false);
  } else if (!use_vnni<T>()) {
    ws.af.resize(M * K);
    ws.bf.resize(K * N);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < K; ++j) ws.af[i * K + j] = float(A[i * lda + j]);
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < N; ++j) ws.bf[i * N + j] = float(B[i * ldb + j]);
    at::native::cpublas::brgemm(M, N, K, K, N, ldc, accumulate, ws.af.data(), ws.bf.data(), C, false);
  } else {
    ws.pb.pack(K, N, B, ldb);
    tile_mm(M, A, lda, ws.pb, accumulate, C, ldc, ws);
  }
}

// The same with B packed beforehand; n >= 0 and k >= 0 use only B's first n columns and first k
// rows (A then has k columns): causal attention skips the keys a query block cannot see.
template <typename T>
inline void tile_mm(int64_t M, const T* A, int64_t lda, const PackedB<T>& B, bool accumulate, acc_t<T>* C,
                    int64_t ldc, Scratch<T>& ws, int64_t n, int64_t k) {
  const int64_t N = n < 0 ? B.N : std::min(n, B.N), K = k < 0 ? B.K : std::min(k, B.K);
  if (!B.vnni || K == 0) {
    tile_mm(M, N, K, A, lda, B.b, B.ldb, accumulate, C, ldc, ws);
    return;
  }
  if (M == 0 || N == 0) return;
  if constexpr (std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>) {
    // A panel's rows are stored in pairs, so its first k rows are its first round_up(k, 2) / 2
    // pairs: fewer rows is a shorter K over the same panel. An odd K pads A with a zero column,
    // which meets row K of the pair (B's own row, or the packing's zeros): an exact zero while
    // that row is finite.
    const int64_t panel_rows = round_up(B.K, 2);
    const int64_t Kp = round_up(K, 2);
    const T* a = A;
    int64_t lda_ = lda;
    if (Kp != K) {
      ws.a.resize(M * Kp);
      for (int64_t i = 0; i < M; ++i) {
        std::memcpy(ws.a.data() + i * Kp, A + i * lda, K * sizeof(T));
        ws.a[i * Kp + K] = T(0);
      }
      a = ws.a.data();
      lda_ = Kp;
    }
    for (int64_t n0 = 0, p = 0; n0 < N; n0 += kPanel, ++p)
      vnni_panel_mm(M, std::min(kPanel, N - n0), Kp, a, lda_, B.panels.data() + p * panel_rows * kPanel,
                    round_up(std::min(kPanel, B.N - n0), 16), accumulate, C + n0, ldc, ws.c);
  }
}

// Releases the tile state (AMX) a worker's VNNI brgemm calls may have configured.
template <typename T>
inline void tile_done() {
  if (use_vnni<T>()) at::native::cpublas::brgemm_release();
}

// The machine's peak in GFLOP/s on all threads, measured for `seconds` per thread: fp32, the
// FMA peak at the kernels' build ISA (independent FMA chains); bf16, the VNNI brgemm ukernel
// (AMX or AVX512-BF16 dot products) on cache-resident tiles, 0 where bf16 is not native. The
// benchmarks report MFU against these.
double peak_gflops(at::ScalarType dtype, double seconds);

// c (+)= op(a) @ op(b), op = transpose when ta / tb; a, b 2-D of one dtype T, c a [m, n]
// tensor in T's accumulation dtype (float32 for bf16/fp16), rows contiguous.
void mm_acc(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb, at::Tensor& c, bool accumulate);

}  // namespace kr::gemm
