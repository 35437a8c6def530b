// Torch-side glue shared by the CUDA masked linear binding (masked_linear_torch_cuda.cpp)
// and its CPU tile-reference (masked_linear_tileref_cpu.cpp): argument checks,
// the gathers into degree-sorted order and the scatters back, dtype handling.
// Both run the same sequence of kernels through a `Kernels` policy, so the CPU
// tests cover everything the CUDA path does but the thread mapping.
//
// Prepared inputs (armodel_fast.ops.masked_linear.prepare_sorted): w_sorted [O, I]
// (row i = unit perm_out[i], column j = input perm_in[j], unmasked), perm_in [I],
// perm_out [O], in_sorted [I] / out_sorted [O] (ascending degrees). x_sorted /
// y_sorted: x's columns / y's units (and grad_y's) are already in sorted order.
// dW and db are always returned in the user's layout, dx in x's; all three in x's
// dtype (the op's inputs share one dtype; w_sorted may be stored in the compute type).
//
// Kernels policy (all tensors contiguous, compute type, on the kernels' device):
//   void forward(const Shape&, const at::Tensor& x_s, const at::Tensor& w_s, const at::Tensor& bias_s, at::Tensor& y_s)
//   void grad_pre(const Shape&, const at::Tensor& gy_s, const at::Tensor& y_s, at::Tensor& g, at::Tensor& db_s)
//   void grad_input(const Shape&, const at::Tensor& g, const at::Tensor& w_s, at::Tensor& dx_s)
//   void grad_weight(const Shape&, const at::Tensor& g, const at::Tensor& x_s, at::Tensor& dw_s)
// (bias_s / y_s / db_s undefined when absent or not needed).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "common/checks.h"
#include "masked_linear/masked_linear_math.h"

namespace af {
namespace ml_glue {

struct Shape {
  int64_t B, O, I;
  const int64_t* in_sorted;
  const int64_t* out_sorted;
  bool strict;
  int64_t act;
  bool is_double;
};

struct Sorted {
  at::Tensor w, perm_in, perm_out, in_sorted, out_sorted;
  at::ScalarType ct;  // compute type: float64 for float64, else float32
};

inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_device(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, " (with the prepared weights), got ",
                    t.device());
}

inline Sorted check_sorted(const at::Tensor& w_sorted, const at::Tensor& perm_in, const at::Tensor& perm_out,
                           const at::Tensor& in_sorted, const at::Tensor& out_sorted, bool want_cuda,
                           int64_t activation) {
  check_float_tensor(w_sorted, "w_sorted", 2);
  TORCH_CHECK_VALUE(w_sorted.is_cuda() == want_cuda, "w_sorted must be a ", want_cuda ? "CUDA" : "CPU",
                    " tensor, got ", w_sorted.device());
  TORCH_CHECK_VALUE(activation >= ml::kNone && activation <= ml::kTanh,
                    "activation must be 0 (none), 1 (relu), 2 (elu) or 3 (tanh), got ", activation);
  const int64_t O = w_sorted.size(0), I = w_sorted.size(1);
  const std::pair<const at::Tensor*, const char*> ints[] = {
      {&perm_in, "perm_in"}, {&perm_out, "perm_out"}, {&in_sorted, "in_sorted"}, {&out_sorted, "out_sorted"}};
  for (const auto& [t, name] : ints) {
    check_defined(*t, name);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
    const int64_t n = (t == &perm_in || t == &in_sorted) ? I : O;
    TORCH_CHECK_VALUE(t->dim() == 1 && t->numel() == n, name, " must have shape [", n, "], got ", t->sizes());
    check_device(*t, name, w_sorted.device());
  }
  const auto ct = compute_type(w_sorted.scalar_type());
  return {w_sorted.to(ct).contiguous(), perm_in.contiguous(), perm_out.contiguous(), in_sorted.contiguous(),
          out_sorted.contiguous(), ct};
}

inline Shape shape(const Sorted& s, int64_t B, bool strict, int64_t act) {
  return {B, s.w.size(0), s.w.size(1), s.in_sorted.const_data_ptr<int64_t>(),
          s.out_sorted.const_data_ptr<int64_t>(), strict, act, s.ct == at::kDouble};
}

// [B, n] in the user's column order (or already sorted) -> sorted, contiguous, compute type.
inline at::Tensor to_sorted(const at::Tensor& t, const at::Tensor& perm, bool sorted, at::ScalarType ct) {
  return (sorted ? t : t.index_select(1, perm)).to(ct).contiguous();
}

// Sorted [B, n] -> the user's column order (or left sorted), in dtype `dt`.
inline at::Tensor from_sorted(const at::Tensor& ts, const at::Tensor& perm, bool sorted, at::ScalarType dt) {
  if (sorted) return ts.to(dt);
  at::Tensor out = at::empty(ts.sizes(), ts.options().dtype(dt));
  out.index_copy_(1, perm, ts.to(dt));
  return out;
}

inline void check_x(const at::Tensor& x, const char* name, const Sorted& s, int64_t n) {
  check_float_tensor(x, name, 2);
  check_device(x, name, s.w.device());
  TORCH_CHECK_VALUE(x.size(1) == n, name, " must have shape [B, ", n, "], got ", x.sizes());
}

template <class Kernels>
at::Tensor forward(const at::Tensor& x, const at::Tensor& w_sorted, const std::optional<at::Tensor>& bias,
                   const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted,
                   const at::Tensor& out_sorted, bool strict, int64_t activation, bool x_sorted, bool y_sorted,
                   bool want_cuda, Kernels& k) {
  const Sorted s = check_sorted(w_sorted, perm_in, perm_out, in_sorted, out_sorted, want_cuda, activation);
  const int64_t O = s.w.size(0), I = s.w.size(1);
  check_x(x, "x", s, I);
  at::Tensor bias_s;
  if (bias.has_value() && bias->defined()) {
    check_float_tensor(*bias, "bias", 1);
    check_device(*bias, "bias", s.w.device());
    TORCH_CHECK_VALUE(bias->numel() == O, "bias must have shape [", O, "], got ", bias->sizes());
    bias_s = bias->index_select(0, s.perm_out).to(s.ct).contiguous();
  }
  const at::Tensor xs = to_sorted(x, s.perm_in, x_sorted, s.ct);
  at::Tensor ys = at::empty({x.size(0), O}, xs.options());
  k.forward(shape(s, x.size(0), strict, activation), xs, s.w, bias_s, ys);
  return from_sorted(ys, s.perm_out, y_sorted, x.scalar_type());
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted, const at::Tensor& out_sorted,
    bool strict, int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db,
    bool want_cuda, Kernels& k) {
  const Sorted s = check_sorted(w_sorted, perm_in, perm_out, in_sorted, out_sorted, want_cuda, activation);
  const int64_t O = s.w.size(0), I = s.w.size(1);
  check_x(x, "x", s, I);
  const int64_t B = x.size(0);
  check_x(grad_y, "grad_y", s, O);
  TORCH_CHECK_VALUE(grad_y.size(0) == B, "grad_y must have shape [", B, ", ", O, "], got ", grad_y.sizes());
  const bool has_y = y.has_value() && y->defined();
  TORCH_CHECK_VALUE(activation == ml::kNone || has_y, "y (the forward output) is required for an activation");
  const Shape sh = shape(s, B, strict, activation);
  const at::Tensor gys = to_sorted(grad_y, s.perm_out, y_sorted, s.ct);
  at::Tensor ys;
  if (activation != ml::kNone) {
    check_x(*y, "y", s, O);
    TORCH_CHECK_VALUE(y->size(0) == B, "y must have shape [", B, ", ", O, "], got ", y->sizes());
    ys = to_sorted(*y, s.perm_out, y_sorted, s.ct);
  }
  at::Tensor g = activation == ml::kNone ? gys : at::empty_like(gys);
  at::Tensor db_s = need_db ? at::empty({O}, gys.options()) : at::Tensor();
  k.grad_pre(sh, gys, ys, g, db_s);
  at::Tensor dx, dw, db;
  if (need_db) {
    db = at::empty({O}, gys.options().dtype(x.scalar_type()));
    db.index_copy_(0, s.perm_out, db_s.to(db.scalar_type()));
  }
  if (need_dx) {
    at::Tensor dxs = at::empty({B, I}, gys.options());
    k.grad_input(sh, g, s.w, dxs);
    dx = from_sorted(dxs, s.perm_in, x_sorted, x.scalar_type());
  }
  if (need_dw) {
    const at::Tensor xs = to_sorted(x, s.perm_in, x_sorted, s.ct);
    at::Tensor dws = at::empty({O, I}, gys.options());
    k.grad_weight(sh, g, xs, dws);
    at::Tensor rows = at::empty({O, I}, dws.options());
    rows.index_copy_(0, s.perm_out, dws);  // user's row order, sorted columns
    dw = from_sorted(rows, s.perm_in, false, x.scalar_type());
  }
  return {dx, dw, db};
}

}  // namespace ml_glue
}  // namespace af
