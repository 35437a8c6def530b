// Value checks on the CPU, one pass over the bit patterns without a temporary: whether a
// tensor holds NaN/inf (the NaN checks of the masked layers and samplers, DESIGN.md
// section 9) or a value other than 0 and 1 (the Bernoulli models' input check; the torch
// form ((x == 0) | (x == 1)).all() makes two [B, D] bool tensors, 0.1-0.2 ms at [100, 784]).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "common/ops.h"

namespace af {
namespace {

// Whether ``hit(bits)`` holds for some element of t (read as bits_t), in chunks of 4096:
// compare-and-count vectorises (an early exit per element would not), 4096 fits any
// bits_t count, and the threads stop at the next chunk once one has found a hit.
template <typename bits_t, typename Hit>
bool any_bits(const at::Tensor& t, const Hit& hit) {
  const at::Tensor c = t.contiguous();
  const auto* bytes = static_cast<const unsigned char*>(c.const_data_ptr());
  std::atomic<bool> found{false};
  at::parallel_for(0, c.numel(), 1 << 16, [&](int64_t a, int64_t b) {
    constexpr int64_t kChunk = 4096;
    for (int64_t s = a; s < b && !found.load(std::memory_order_relaxed); s += kChunk) {
      const int64_t e = std::min(b, s + kChunk);
      bits_t hits = 0;
      for (int64_t i = s; i < e; ++i) {
        bits_t v;  // the element's bits, copied (not read through a bits_t*: no aliasing of the float storage)
        std::memcpy(&v, bytes + i * static_cast<int64_t>(sizeof(bits_t)), sizeof(bits_t));
        hits += static_cast<bits_t>(hit(v));
      }
      if (hits != 0) found.store(true, std::memory_order_relaxed);
    }
  });
  return found.load();
}

// NaN or +-inf: the exponent bits all ones.
template <typename bits_t>
bool any_exponent_all_ones(const at::Tensor& t, bits_t exp_mask) {
  return any_bits<bits_t>(t, [=](bits_t v) { return (v & exp_mask) == exp_mask; });
}

// A value other than zero, negative zero and one (for integers negative zero is zero).
template <typename bits_t>
bool any_other_bits(const at::Tensor& t, bits_t zero_neg, bits_t one) {
  return any_bits<bits_t>(t, [=](bits_t v) { return !((v == 0) | (v == zero_neg) | (v == one)); });
}

}  // namespace

bool masked_linear_any_nonfinite(const at::Tensor& values) {
  TORCH_CHECK_VALUE(values.device().is_cpu(), "t must be a CPU tensor, got ", values.device());
  // One copy of each broadcast (stride-0) dimension: the same values, not materialised by the
  // contiguous read below (the gradient of .sum() is one value expanded to [B, O]).
  at::Tensor t = values;
  for (int64_t d = 0; d < t.dim() && t.numel() > 1; ++d) {
    if (t.stride(d) == 0 && t.size(d) > 1) t = t.narrow(d, 0, 1);
  }
  switch (t.scalar_type()) {
    case at::kFloat:
      return any_exponent_all_ones<uint32_t>(t, 0x7f800000u);
    case at::kDouble:
      return any_exponent_all_ones<uint64_t>(t, 0x7ff0000000000000ull);
    case at::kHalf:
      return any_exponent_all_ones<uint16_t>(t, 0x7c00u);
    case at::kBFloat16:
      return any_exponent_all_ones<uint16_t>(t, 0x7f80u);
    default:
      return !at::isfinite(t).all().item<bool>();
  }
}

bool any_nonbinary(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "t must be a CPU tensor, got ", t.device());
  switch (t.scalar_type()) {
    case at::kFloat:
      return any_other_bits<uint32_t>(t, 0x80000000u, 0x3f800000u);
    case at::kDouble:
      return any_other_bits<uint64_t>(t, 0x8000000000000000ull, 0x3ff0000000000000ull);
    case at::kHalf:
      return any_other_bits<uint16_t>(t, 0x8000u, 0x3c00u);
    case at::kBFloat16:
      return any_other_bits<uint16_t>(t, 0x8000u, 0x3f80u);
    case at::kBool:
      return false;
    case at::kByte:
    case at::kChar:
      return any_other_bits<uint8_t>(t, 0, 1);
    case at::kShort:
      return any_other_bits<uint16_t>(t, 0, 1);
    case at::kInt:
      return any_other_bits<uint32_t>(t, 0, 1);
    case at::kLong:
      return any_other_bits<uint64_t>(t, 0, 1);
    default:
      return !((t == 0) | (t == 1)).all().item<bool>();
  }
}

}  // namespace af
