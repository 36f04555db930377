// Dropout whose mask is a pure function of (seed, element index):
//   a = mix(k0 ^ mix(k1)),  b = mix(hi(i) + k1),  keep_i = mix(mix(lo(i) ^ a) + b) >= floor(p * 2^32),
//   y_i = keep_i ? x_i / (1 - p) : 0      (computed as x_i * factor in fp32, double for double)
// with k0, k1 the low and high halves of the seed, lo/hi the halves of the flat index i and mix a
// 32-bit avalanche hash (xor-shift-multiply, the "lowbias32" constants). The seed is hashed
// before it meets the index, so neighbouring seeds do not give shifted copies of one mask. Nothing is stored for the
// backward: x -> x * m / (1 - p) is linear, so its backward is the same op on the gradient with
// the same seed. PyTorch's CPU dropout draws its mask one element at a time from mt19937 (MKL's
// vectorised generator only on Intel CPUs) and saves it; this one hashes 8-16 lanes at a time on
// every thread and saves nothing. Each element depends on its index only: results do not depend
// on the thread count or on how the work is cut.
#include <cmath>
#include <cstdint>

#include "ops/common.h"

namespace kr {
namespace {

constexpr const char* kOp = "dropout";
// Elements per piece of work: a multiple of every vector width, and a divisor of 2^32, so the
// high half of the index is the same across a piece.
constexpr int64_t kChunk = 1024;

inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

template <typename T>
void dropout_chunk(const T* x, T* y, int64_t start, int64_t n, uint32_t a, uint32_t k1, uint32_t threshold,
                   acc_t<T> scale) {
  using IO = VecIO<T>;
  using A = acc_t<T>;
  constexpr int64_t K = IO::kSize;
  alignas(64) A factor[kChunk];
  const uint32_t lo = static_cast<uint32_t>(start);
  const uint32_t b = mix32(static_cast<uint32_t>(static_cast<uint64_t>(start) >> 32) + k1);
  for (int64_t j = 0; j < n; ++j) {  // plain uint32 arithmetic: the compiler vectorises it
    const uint32_t u = mix32(mix32((lo + static_cast<uint32_t>(j)) ^ a) + b);
    factor[j] = u >= threshold ? scale : A(0);
  }
  int64_t j = 0;
  for (; j + K <= n; j += K) IO::store(y + j, IO::load(x + j) * IO::V::loadu(factor + j));
  if (j < n) IO::store(y + j, IO::load(x + j, n - j) * IO::V::loadu(factor + j, n - j), n - j);
}

at::Tensor dropout_cpu(const at::Tensor& x_, const at::Tensor& seed, double p) {
  check_cpu(x_, kOp, "x");
  check_float(x_, kOp, "x");
  check_cpu(seed, kOp, "seed");
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, kOp, ": seed must be int64, got ", seed.scalar_type());
  TORCH_CHECK_VALUE(seed.dim() == 0, kOp, ": seed must be a 0-d tensor, got ", shape_str(seed));
  TORCH_CHECK_VALUE(p >= 0 && p < 1, kOp, ": p must be in [0, 1), got ", p);
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = x.numel();
  if (numel == 0) return y;
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  const uint32_t k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  const uint32_t a = mix32(k0 ^ mix32(k1));
  // p < 1, so p * 2^32 < 2^32 and the floor fits in 32 bits.
  const uint32_t threshold = static_cast<uint32_t>(std::floor(p * 4294967296.0));
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dropout_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A scale = static_cast<A>(1.0 / (1.0 - p));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / kChunk);
    at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t start = c * kChunk;
        dropout_chunk<scalar_t>(xp + start, yp + start, start, std::min(kChunk, numel - start), a, k1, threshold,
                                scale);
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(kr_mini_llm, CPU, m) { m.impl("dropout", &dropout_cpu); }

}  // namespace kr
