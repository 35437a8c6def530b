// The reverse sweep of the affine MADE inverse's adjoint (armodel_fast/ops/made/inverse_grad.py,
// docs/DESIGN.md section 4): the loop over the degrees, D down to 1, on the CPU. Every batch row
// sweeps on its own (nothing couples rows), so the rows are split over the threads and swept in
// tiles of kTile rows: each weight row read serves the tile's rows from L1. The torch form of the
// same steps (``_sweep`` there) ran a dozen small ATen ops per degree, whose dispatch was most of a
// differentiable sample's time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/ops.h"

namespace af {
namespace {

constexpr int64_t kTile = 8;

// A [B, n] row-major tensor's data and row stride (nullptr when absent).
template <typename scalar_t>
struct Rows {
  scalar_t* p = nullptr;
  int64_t ld = 0;
  scalar_t* row(int64_t b) const { return p + b * ld; }
};

template <typename scalar_t>
Rows<scalar_t> rows_of(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.stride(1) == 1, "made_inverse_sweep: tensors must be 2-D with unit column stride");
  return {const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()), t.stride(0)};
}

template <typename scalar_t>
Rows<scalar_t> rows_of(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? rows_of<scalar_t>(*t) : Rows<scalar_t>{};
}

// dst[0:n] += a * w[0:n] (+ c * v[0:n]): the pushes of one unit (one output pair) into its inputs.
template <typename scalar_t>
inline void axpy(scalar_t* dst, scalar_t a, const scalar_t* w, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += a * w[j];
}

template <typename scalar_t>
inline void axpy2(scalar_t* dst, scalar_t a, const scalar_t* w, scalar_t c, const scalar_t* v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += a * w[j] + c * v[j];
}

}  // namespace

void made_inverse_sweep(const std::vector<at::Tensor>& weights, const std::vector<bool>& act_in,
                        const std::vector<bool>& skip, const at::Tensor& unit_bounds, const at::Tensor& reaches,
                        const std::vector<at::Tensor>& acc, const std::vector<std::optional<at::Tensor>>& acc_act,
                        const std::vector<std::optional<at::Tensor>>& in_derivs,
                        const std::vector<std::optional<at::Tensor>>& derivs, const std::vector<at::Tensor>& deltas,
                        const at::Tensor& acc_x, const at::Tensor& c_out, const at::Tensor& head,
                        const at::Tensor& gl_ds, const at::Tensor& w_out, const at::Tensor& out_reach,
                        const std::optional<at::Tensor>& w_dir, const std::optional<at::Tensor>& dir_reach, int64_t D,
                        int64_t top) {
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(act_in.size()) == L && static_cast<int64_t>(skip.size()) == L &&
                        static_cast<int64_t>(acc.size()) == L && static_cast<int64_t>(acc_act.size()) == L &&
                        static_cast<int64_t>(in_derivs.size()) == L && static_cast<int64_t>(derivs.size()) == L &&
                        static_cast<int64_t>(deltas.size()) == L,
                    "made_inverse_sweep: one entry per hidden layer in every list");
  for (const auto* t : {&unit_bounds, &reaches, &out_reach}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                      "made_inverse_sweep: bounds and reaches must be contiguous int64 CPU tensors");
  }
  TORCH_CHECK_VALUE(unit_bounds.dim() == 2 && unit_bounds.size(0) == L && unit_bounds.size(1) == top + 2 &&
                        reaches.dim() == 2 && reaches.size(0) == L && reaches.size(1) == top + 1 &&
                        out_reach.numel() == top + 1,
                    "made_inverse_sweep: bounds [L, top + 2], reaches [L, top + 1], out_reach [top + 1]");
  const int64_t B = acc_x.size(0);
  TORCH_CHECK_VALUE(D >= 1 && D <= top && acc_x.dim() == 2 && acc_x.size(1) == D && c_out.size(0) == B &&
                        c_out.size(1) == 2 * D && head.size(0) == B && head.size(1) == D && gl_ds.size(0) == B &&
                        gl_ds.size(1) == D,
                    "made_inverse_sweep: acc_x, head, gl_ds [B, D], c_out [B, 2D], D <= top");
  const bool direct = w_dir.has_value() && w_dir->defined();
  TORCH_CHECK_VALUE(!direct || (dir_reach.has_value() && dir_reach->device().is_cpu() &&
                                dir_reach->scalar_type() == at::kLong && dir_reach->is_contiguous() &&
                                dir_reach->numel() == top + 1),
                    "made_inverse_sweep: dir_reach must be a contiguous int64 CPU tensor [top + 1]");
  const auto dtype = acc_x.scalar_type();
  for (const auto& t : weights) TORCH_CHECK_TYPE(t.scalar_type() == dtype, "made_inverse_sweep: one dtype");
  const int64_t* bounds = unit_bounds.const_data_ptr<int64_t>();
  const int64_t* reach = reaches.const_data_ptr<int64_t>();
  const int64_t* o_reach = out_reach.const_data_ptr<int64_t>();
  const int64_t* d_reach = direct ? dir_reach->const_data_ptr<int64_t>() : nullptr;
  // read-only operands, contiguous (kept alive here)
  std::vector<at::Tensor> w;
  for (const auto& t : weights) w.push_back(t.contiguous());
  const at::Tensor wo = w_out.contiguous(), wd = direct ? w_dir->contiguous() : at::Tensor();
  const at::Tensor hd = head.contiguous(), gd = gl_ds.contiguous();
  for (const auto& t : acc) TORCH_CHECK_TYPE(t.scalar_type() == dtype && t.size(0) == B, "made_inverse_sweep: acc");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "made_inverse_sweep", [&] {
    std::vector<Rows<scalar_t>> A, Aact, Din, Dr, Dl, W;
    for (int64_t i = 0; i < L; ++i) {
      A.push_back(rows_of<scalar_t>(acc[i]));
      Aact.push_back(rows_of<scalar_t>(acc_act[i]));
      Din.push_back(rows_of<scalar_t>(in_derivs[i]));
      Dr.push_back(rows_of<scalar_t>(derivs[i]));
      Dl.push_back(rows_of<scalar_t>(deltas[i]));
      W.push_back(rows_of<scalar_t>(w[i]));
    }
    const Rows<scalar_t> X = rows_of<scalar_t>(acc_x), C = rows_of<scalar_t>(c_out), H = rows_of<scalar_t>(hd),
                         G = rows_of<scalar_t>(gd), WO = rows_of<scalar_t>(wo),
                         WD = direct ? rows_of<scalar_t>(wd) : Rows<scalar_t>{};
    const Rows<scalar_t> below_out = L > 0 ? A[L - 1] : X;
    at::parallel_for(0, B, kTile, [&](int64_t r0, int64_t r1) {
      for (int64_t t0 = r0; t0 < r1; t0 += kTile) {
        const int64_t t1 = std::min(r1, t0 + kTile);
        for (int64_t k = top; k >= 1; --k) {
          for (int64_t i = L - 1; i >= 0; --i) {  // hidden units of degree k, top layer first
            const int64_t u0 = bounds[i * (top + 2) + k], u1 = bounds[i * (top + 2) + k + 1];
            const int64_t r = reach[i * (top + 1) + k];
            const Rows<scalar_t>& below = i == 0 ? X : (act_in[i] ? Aact[i - 1] : A[i - 1]);
            for (int64_t u = u0; u < u1; ++u) {
              for (int64_t b = t0; b < t1; ++b) {
                scalar_t g = A[i].row(b)[u];
                if (Aact[i].p != nullptr) g = g + Aact[i].row(b)[u] * Din[i + 1].row(b)[u];  // read through act
                const scalar_t delta = Dr[i].p != nullptr ? g * Dr[i].row(b)[u] : g;
                Dl[i].row(b)[u] = delta;
                if (skip[i]) A[i - 2].row(b)[u] += delta;  // the block's input was added unchanged
                if (r > 0) axpy(below.row(b), delta, W[i].row(u), r);
              }
            }
          }
          if (k > D) continue;
          // dimension order[k-1] is complete: the cotangents of its output pair (mu: w_k;
          // log sigma: w_k head_k + gl ds_k), pushed into the units and inputs they read.
          const int64_t o = 2 * (k - 1), ro = o_reach[k], rd = direct ? d_reach[k] : 0;
          for (int64_t b = t0; b < t1; ++b) {
            const scalar_t wk = X.row(b)[k - 1];
            const scalar_t c1 = wk * H.row(b)[k - 1] + G.row(b)[k - 1];
            C.row(b)[o] = wk;
            C.row(b)[o + 1] = c1;
            if (ro > 0) axpy2(below_out.row(b), wk, WO.row(o), c1, WO.row(o + 1), ro);
            if (rd > 0) axpy2(X.row(b), wk, WD.row(o), c1, WD.row(o + 1), rd);
          }
        }
      }
    });
  });
}

}  // namespace af
