// Torch-side glue shared by the CPU row-reference (nade_rowref_cpu.cpp) and the
// CUDA binding (nade_torch_cuda.cpp): argument checks, the dimension-major layouts of
// nade_row.h, and output shapes. kind: 0 binary, 1 categorical, 2 RNADE.
//
// Python-facing layouts are the reference ones: W [H, D] (or [H, D, K]),
// V [D, H] / [D, K, H] / [D, 3, K, H], b [D] / [D, K] / [D, 3, K].
#pragma once

#include <torch/extension.h>

#include <vector>

#include "common/checks.h"

namespace af {
namespace nade_glue {

struct Shapes {
  int64_t D, H, K, P, Kin, U;
  std::vector<int64_t> out_tail;  // trailing shape of the per-dimension outputs
};

inline Shapes check(int64_t kind, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                    const at::Tensor& b, const at::Tensor& order) {
  TORCH_CHECK_VALUE(kind >= 0 && kind <= 2, "kind must be 0 (binary), 1 (categorical) or 2 (RNADE), got ", kind);
  TORCH_CHECK_TYPE(W.scalar_type() == at::kFloat || W.scalar_type() == at::kDouble,
                   "W must be float32 or float64, got ", W.scalar_type());
  for (const auto* t : {&c, &V, &b})
    TORCH_CHECK_TYPE(t->scalar_type() == W.scalar_type(), "c, V and b must have W's dtype ", W.scalar_type());
  TORCH_CHECK_VALUE(W.dim() == (kind == 1 ? 3 : 2), "W has the wrong number of dimensions: ", W.sizes());
  Shapes s;
  s.H = W.size(0);
  s.D = W.size(1);
  s.K = kind == 0 ? 1 : (kind == 1 ? W.size(2) : V.size(2));
  s.P = kind == 0 ? 1 : (kind == 1 ? s.K : 3 * s.K);
  s.Kin = kind == 1 ? s.K : 1;
  s.U = kind == 2 ? 2 : 1;
  s.out_tail = kind == 0 ? std::vector<int64_t>{} : (kind == 1 ? std::vector<int64_t>{s.K}
                                                               : std::vector<int64_t>{3, s.K});
  TORCH_CHECK_VALUE(c.dim() == 1 && c.size(0) == s.H, "c must have shape [H=", s.H, "], got ", c.sizes());
  TORCH_CHECK_VALUE(V.numel() == s.D * s.P * s.H && V.size(0) == s.D && V.size(-1) == s.H,
                    "V must have shape [D, P, H] with P=", s.P, ", got ", V.sizes());
  TORCH_CHECK_VALUE(b.numel() == s.D * s.P && b.size(0) == s.D, "b must have shape [D, P], got ", b.sizes());
  check_order(order, s.D, "order");
  return s;
}

// W in the layout of nade_row.h: WT [D, Kin, H].
inline at::Tensor to_WT(const at::Tensor& W, int64_t kind) {
  return (kind == 1 ? W.permute({1, 2, 0}) : W.t()).contiguous();
}

inline at::Tensor from_WT(const at::Tensor& dWT, int64_t kind) {
  return (kind == 1 ? dWT.permute({2, 0, 1}) : dWT.t()).contiguous();
}

inline std::vector<int64_t> out_shape(int64_t B, const Shapes& s) {
  std::vector<int64_t> shape{B, s.D};
  shape.insert(shape.end(), s.out_tail.begin(), s.out_tail.end());
  return shape;
}

inline void check_x(const at::Tensor& x, int64_t kind, const Shapes& s, const at::Tensor& W) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == s.D, "x must have shape [B, D=", s.D, "], got ", x.sizes());
  if (kind == 1) {
    TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, "x must be int64 class indices, got ", x.scalar_type());
  } else {
    TORCH_CHECK_TYPE(x.scalar_type() == W.scalar_type(), "x must have W's dtype ", W.scalar_type());
  }
}

inline void check_u(const at::Tensor& u, const Shapes& s, const at::Tensor& W) {
  TORCH_CHECK_TYPE(u.scalar_type() == W.scalar_type(), "u must have W's dtype ", W.scalar_type());
  TORCH_CHECK_VALUE(u.dim() >= 2 && u.size(1) == s.D && u.numel() == u.size(0) * s.D * s.U,
                    "u must have shape [n, D", s.U == 2 ? ", 2]" : "]", ", got ", u.sizes());
}

}  // namespace nade_glue
}  // namespace af
