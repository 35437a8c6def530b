// Torch-side glue of the native NADE entry points, shared by the C++ CPU launchers
// (nade_cpu_entry.cpp), the CPU row-reference (nade_rowref_cpu.cpp) and the CUDA binding
// (nade_torch_cuda.cpp): the argument checks, driven by the head of each kind
// (nade_heads.h, nade_kinds.h), the dimension-major layouts of nade_row.h, output shapes.
//
// Python-facing layouts are the reference ones: W [H, D] (or [H, D, K] when an input
// selects a column per class), V [D, *tail, H], b [D, *tail], outputs [B, D, *tail] with
// tail [] (binary), [K] (categorical), [3, K] (RNADE).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "nade/nade_kinds.h"

namespace af {
namespace nade_glue {

struct Shapes {
  int64_t D, H, K, P, Kin, U;
  bool int_x, real_x;             // x int64 class indices; x continuous (the backward returns dx)
  std::vector<int64_t> out_tail;  // trailing shape of the per-dimension outputs
};

inline std::string shape_text(const char* head, const std::vector<int64_t>& tail, int64_t P, int64_t K,
                              const char* last) {
  std::string s = std::string("[") + head;
  if (tail.size() == 2) s += ", " + std::to_string(P / K);
  if (!tail.empty()) s += ", K";
  return s + last;
}

inline void check_shape(const at::Tensor& t, const char* name, const std::vector<int64_t>& shape,
                        const std::string& names) {
  check_defined(t, name);
  TORCH_CHECK_VALUE(t.sizes().vec() == shape, name, " must have shape ", names, " = ", at::IntArrayRef(shape),
                    ", got ", t.sizes());
}

// The shapes of a `Head` model's parameters, checked (dtypes: float32 or float64, one for all).
template <class Head>
Shapes head_shapes(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b) {
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&W, "W"}, {&c, "c"}, {&V, "V"}, {&b, "b"}}) {
    check_defined(*t, name);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, name,
                     " must be float32 or float64, got ", t->scalar_type());
    TORCH_CHECK_TYPE(t->scalar_type() == W.scalar_type(), name, " must have the same dtype as W (",
                     W.scalar_type(), "), got ", t->scalar_type());
  }
  constexpr int rank = Head::kOutRank;
  TORCH_CHECK_VALUE(W.dim() >= 2, "W must have shape [H, D, ...], got ", W.sizes());
  TORCH_CHECK_VALUE(V.dim() == 2 + rank, "V must have ", 2 + rank, " dimensions, got shape ", V.sizes());
  Shapes s;
  s.H = W.size(0);
  s.D = W.size(1);
  s.K = rank == 0 ? 1 : V.size(-2);
  s.P = Head::P(s.K);
  s.Kin = Head::Kin(s.K);
  s.U = Head::kU;
  s.int_x = std::is_same<typename Head::X, int64_t>::value;
  s.real_x = Head::kRealX;
  if (rank >= 1) s.out_tail.push_back(s.K);
  if (rank == 2) s.out_tail.insert(s.out_tail.begin(), s.P / s.K);
  TORCH_CHECK_VALUE(s.K >= 1, "K must be >= 1, got V of shape ", V.sizes());
  std::vector<int64_t> w_shape{s.H, s.D}, v_shape{s.D}, b_shape{s.D};
  if (s.Kin > 1) w_shape.push_back(s.K);
  v_shape.insert(v_shape.end(), s.out_tail.begin(), s.out_tail.end());
  b_shape.insert(b_shape.end(), s.out_tail.begin(), s.out_tail.end());
  v_shape.push_back(s.H);
  check_shape(W, "W", w_shape, s.Kin > 1 ? "[H, D, K]" : "[H, D]");
  check_shape(c, "c", {s.H}, "[H]");
  check_shape(V, "V", v_shape, shape_text("D", s.out_tail, s.P, s.K, ", H]"));
  check_shape(b, "b", b_shape, shape_text("D", s.out_tail, s.P, s.K, "]"));
  return s;
}

// The checked shapes of a `kind` model; `order` must be a permutation of 0..D-1.
inline Shapes check(int64_t kind, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                    const at::Tensor& b, const at::Tensor& order) {
  Shapes s;
  const bool known = nade::visit_kind(kind, [&](auto tag) {
    s = head_shapes<typename decltype(tag)::template Head<float>>(W, c, V, b);
  });
  TORCH_CHECK_VALUE(known, "kind must be one of ", nade::kinds_text(), "got ", kind);
  check_order(order, s.D, "order");
  return s;
}

// W in the layout of nade_row.h: WT [D, Kin, H].
inline at::Tensor to_WT(const at::Tensor& W, const Shapes& s) {
  return W.reshape({s.H, s.D, s.Kin}).permute({1, 2, 0}).contiguous();
}

inline at::Tensor from_WT(const at::Tensor& dWT, const Shapes& s) {
  const at::Tensor w = dWT.permute({2, 0, 1}).contiguous();  // [H, D, Kin]
  return s.Kin > 1 ? w : w.view({s.H, s.D});
}

// bad_col [D, Kin] of nade_row.h: 1 where a column of WT [D, Kin, H] holds an inf or NaN.
inline at::Tensor bad_columns(const at::Tensor& WT) {
  return at::logical_not(at::isfinite(WT)).any(-1).to(at::kByte).contiguous();
}

inline std::vector<int64_t> out_shape(int64_t B, const Shapes& s) {
  std::vector<int64_t> shape{B, s.D};
  shape.insert(shape.end(), s.out_tail.begin(), s.out_tail.end());
  return shape;
}

inline void check_x(const at::Tensor& x, const Shapes& s, const at::Tensor& W) {
  check_defined(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == s.D, "x must have shape [B, D=", s.D, "], got ", x.sizes());
  if (s.int_x) {
    TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, "x must be an int64 tensor of class indices, got ", x.scalar_type());
  } else {
    TORCH_CHECK_TYPE(x.scalar_type() == W.scalar_type(), "x must have W's dtype ", W.scalar_type(), ", got ",
                     x.scalar_type());
  }
}

// The head's value rule on every x (x contiguous, on the CPU); one serial pass.
template <class Head> void check_x_values(const at::Tensor& x, int64_t K) {
  using X = typename Head::X;
  const X* p = x.const_data_ptr<X>();
  bool ok = true;
  for (int64_t i = 0; i < x.numel(); ++i) ok &= Head::valid_x(p[i], K);
  if constexpr (std::is_same<X, int64_t>::value) {
    TORCH_CHECK_VALUE(ok, "x", Head::kXRule, K, ")");
  } else {
    TORCH_CHECK_VALUE(ok, "x", Head::kXRule);
  }
}

inline void check_u(const at::Tensor& u, const Shapes& s, const at::Tensor& W) {
  check_defined(u, "u");
  TORCH_CHECK_TYPE(u.scalar_type() == W.scalar_type(), "u must have W's dtype ", W.scalar_type(), ", got ",
                   u.scalar_type());
  const bool ok = s.U == 1 ? (u.dim() == 2 && u.size(1) == s.D) : (u.dim() == 3 && u.size(1) == s.D && u.size(2) == s.U);
  TORCH_CHECK_VALUE(ok, "u must have shape [n, D=", s.D, s.U == 1 ? "]" : ", " + std::to_string(s.U) + "]",
                    ", got ", u.sizes());
}

}  // namespace nade_glue
}  // namespace af
