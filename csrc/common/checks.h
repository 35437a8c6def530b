// Argument checks shared by every kernel launcher (CPU and CUDA).
//
// A launcher validates its inputs with these before touching any data pointer,
// so bad input from Python surfaces as a ValueError / TypeError that names the
// argument (TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError),
// never as a wrong answer or a crash inside a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace af {

inline void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), name, " must be a tensor, got an undefined tensor (None)");
}

// A floating-point strided tensor with `ndim` dimensions (ndim < 0: any).
inline void check_float_tensor(const at::Tensor& t, const char* name, int64_t ndim = -1) {
  check_defined(t, name);
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, name, " must be a dense (strided) tensor, got layout ",
                   t.layout());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(ndim < 0 || t.dim() == ndim, name, " must have ", ndim, " dimensions, got shape ",
                    t.sizes());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  check_defined(t, name);
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (call .contiguous()), got shape ",
                    t.sizes(), " with strides ", t.strides());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  check_defined(a, a_name);
  check_defined(b, b_name);
  TORCH_CHECK_VALUE(a.device() == b.device(), a_name, " and ", b_name,
                    " must be on the same device, got ", a_name, " on ", a.device(), " and ", b_name,
                    " on ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  check_defined(a, a_name);
  check_defined(b, b_name);
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// An ordering: a 1-D int64 tensor of length D holding a permutation of 0..D-1.
// If `device` is given, the ordering must live on the CPU or on that device.
// The values are checked on the CPU (a device ordering is copied: D is small).
inline void check_order(const at::Tensor& order, int64_t D, const char* name = "order",
                        std::optional<at::Device> device = std::nullopt) {
  check_defined(order, name);
  TORCH_CHECK_TYPE(order.layout() == at::kStrided, name, " must be a dense (strided) tensor, got layout ",
                   order.layout());
  TORCH_CHECK_TYPE(order.scalar_type() == at::kLong, name,
                   " must be an int64 (torch.long) tensor holding a permutation of 0..D-1, got ",
                   order.scalar_type());
  TORCH_CHECK_VALUE(order.dim() == 1, name, " must be 1-D, got shape ", order.sizes());
  TORCH_CHECK_VALUE(order.size(0) == D, name, " must have length D=", D, ", got length ", order.size(0));
  TORCH_CHECK_VALUE(!device.has_value() || order.device().is_cpu() || order.device() == *device, name,
                    " must be on the CPU or on ", *device, ", got ", order.device());

  const at::Tensor cpu = order.to(at::kCPU).contiguous();
  const int64_t* o = cpu.const_data_ptr<int64_t>();
  std::vector<bool> seen(static_cast<size_t>(D), false);
  for (int64_t t = 0; t < D; ++t) {
    const int64_t d = o[t];
    TORCH_CHECK_VALUE(d >= 0 && d < D, name, " must be a permutation of 0..", D - 1, ": ", name, "[", t,
                      "] = ", d, " is out of range");
    TORCH_CHECK_VALUE(!seen[static_cast<size_t>(d)], name, " must be a permutation of 0..", D - 1,
                      ": value ", d, " appears more than once (again at ", name, "[", t, "])");
    seen[static_cast<size_t>(d)] = true;
  }
}

}  // namespace af
