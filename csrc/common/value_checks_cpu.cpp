// Value checks of the input validation (armodel_fast/_validate.py) on the CPU: one pass
// over the bit patterns, no temporary (the torch form ((x == 0) | (x == 1)).all() makes
// two [B, D] bool tensors and costs 0.1-0.2 ms at [100, 784]).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

#include "common/ops.h"

namespace af {
namespace {

// Whether some element's bits are none of {zero, negative zero, one} (for integers
// negative zero is zero). Chunks of 4096 keep the count in any bits_t.
template <typename bits_t>
bool any_other_bits(const void* data, int64_t n, bits_t zero_neg, bits_t one) {
  const bits_t* p = static_cast<const bits_t*>(data);
  std::atomic<bool> found{false};
  at::parallel_for(0, n, 1 << 16, [&](int64_t a, int64_t b) {
    constexpr int64_t kChunk = 4096;
    for (int64_t s = a; s < b && !found.load(std::memory_order_relaxed); s += kChunk) {
      const int64_t e = std::min(b, s + kChunk);
      bits_t misses = 0;  // compare-and-count vectorises (an early exit per element would not)
      for (int64_t i = s; i < e; ++i) {
        const bits_t v = p[i];
        misses += static_cast<bits_t>(!((v == 0) | (v == zero_neg) | (v == one)));
      }
      if (misses != 0) found.store(true, std::memory_order_relaxed);
    }
  });
  return found.load();
}

}  // namespace

bool any_nonbinary(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "t must be a CPU tensor, got ", t.device());
  const at::Tensor c = t.contiguous();
  const void* p = c.const_data_ptr();
  const int64_t n = c.numel();
  switch (c.scalar_type()) {
    case at::kFloat:
      return any_other_bits<uint32_t>(p, n, 0x80000000u, 0x3f800000u);
    case at::kDouble:
      return any_other_bits<uint64_t>(p, n, 0x8000000000000000ull, 0x3ff0000000000000ull);
    case at::kHalf:
      return any_other_bits<uint16_t>(p, n, 0x8000u, 0x3c00u);
    case at::kBFloat16:
      return any_other_bits<uint16_t>(p, n, 0x8000u, 0x3f80u);
    case at::kBool:
      return false;
    case at::kByte:
    case at::kChar:
      return any_other_bits<uint8_t>(p, n, 0, 1);
    case at::kShort:
      return any_other_bits<uint16_t>(p, n, 0, 1);
    case at::kInt:
      return any_other_bits<uint32_t>(p, n, 0, 1);
    case at::kLong:
      return any_other_bits<uint64_t>(p, n, 0, 1);
    default:
      return !((c == 0) | (c == 1)).all().item<bool>();
  }
}

}  // namespace af
