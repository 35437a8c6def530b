// Masked linear forward and backward on the CPU by staircase blocks (docs/DESIGN.md
// section 4): one BLAS matmul per row block over the inputs its rows reach, on the
// prepared (gathered) weights or, with sorted degrees, on the caller's W plus a small
// masked slab per block. The plan and the prepared weights: masked_linear_prepare_cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "masked_linear/masked_linear_avx512.h"
#include "masked_linear/masked_linear_math.h"
#include "common/ops.h"
#include "masked_linear/masked_linear_threads.h"

namespace af {
namespace {

using ml_threads::parallel_runs;
using ml_threads::per_thread;
using ml_threads::python_dispatch;

// dst[b, j] = src[b, idx[j]] for j < n (src, dst contiguous rows).
template <typename scalar_t>
void gather_columns(const scalar_t* src, int64_t lds, const int64_t* idx, int64_t n, scalar_t* dst, int64_t B) {
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* s = src + b * lds;
      scalar_t* d = dst + b * n;
      for (int64_t j = 0; j < n; ++j) d[j] = s[idx[j]];
    }
  });
}

}  // namespace

// In-place activation of a (strided) block with ATen's vectorised kernels, the same
// ones the reference's F.relu / F.elu / torch.tanh run.
void activate_(at::Tensor& t, int64_t act) {
  switch (act) {
    case ml::kRelu:
      at::relu_(t);
      break;
    case ml::kElu:
      at::elu_(t);
      break;
    case ml::kTanh:
      at::tanh_(t);
      break;
    default:
      break;
  }
}

// d loss / d pre-activation from the output y = act(pre), as torch's own backward computes it.
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, int64_t act) {
  switch (act) {
    case ml::kRelu:
      return at::threshold_backward(grad, y, 0);
    case ml::kElu:
      return at::elu_backward(grad, 1.0, 1.0, 1.0, /*is_result=*/true, y);
    case ml::kTanh:
      return at::tanh_backward(grad, y);
    default:
      return grad;
  }
}

namespace {

// One staircase block: sorted rows [r0, r1) read the weights [0, c0) straight from
// w and the slab [c0, c1) from its masked copy (c0 == c1: w is masked up to c1).
struct Block {
  int64_t r0, r1, c0, c1, slab_offset;
  int64_t rows() const { return r1 - r0; }
  int64_t wd() const { return c1 - c0; }
};

std::vector<Block> read_blocks(const at::Tensor& blocks, const std::optional<at::Tensor>& slabs) {
  const int64_t nb = blocks.size(0), nc = blocks.size(1);
  const int64_t* bl = blocks.const_data_ptr<int64_t>();
  std::vector<Block> out;
  int64_t off = 0;
  for (int64_t k = 0; k < nb; ++k) {
    const int64_t c1 = bl[nc * k + nc - 1];
    const Block b{bl[nc * k], bl[nc * k + 1], nc == 4 ? bl[nc * k + 2] : c1, c1, off};
    off += b.rows() * b.wd();
    out.push_back(b);
  }
  TORCH_CHECK_VALUE(off == 0 || (slabs.has_value() && slabs->defined() && slabs->numel() == off),
                    "slabs must hold the blocks' masked slabs (", off, " values)");
  return out;
}

void check_weights(const at::Tensor& ws, const at::Tensor& perm_in, const at::Tensor& perm_out,
                   const at::Tensor& blocks, bool in_place) {
  check_float_tensor(ws, "w_sorted", 2);
  if (in_place) {
    TORCH_CHECK_VALUE(ws.stride(1) == 1 && ws.stride(0) >= ws.size(1), "weight must have unit column stride");
  } else {
    check_contiguous(ws, "w_sorted");
  }
  for (const auto* t : {&perm_in, &perm_out, &blocks}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "prepared permutations/blocks must be int64");
    check_contiguous(*t, "prepared permutations/blocks");
  }
  TORCH_CHECK_VALUE(perm_in.numel() == ws.size(1) && perm_out.numel() == ws.size(0),
                    "prepared permutations do not match w_sorted");
  TORCH_CHECK_VALUE(blocks.dim() == 2 && (blocks.size(1) == 3 || blocks.size(1) == 4),
                    "blocks must have shape [nb, 3] or [nb, 4]");
}

at::Tensor slab_of(const std::optional<at::Tensor>& slabs, const Block& b) {
  return slabs->narrow(0, b.slab_offset, b.rows() * b.wd()).view({b.rows(), b.wd()});
}

// The blocks split over the threads by area (rows x c1).
template <typename F>
void parallel_blocks(const std::vector<Block>& bl, bool serial, const F& body) {
  std::vector<double> cost;
  for (const auto& b : bl) cost.push_back(static_cast<double>(b.rows() * b.c1));
  parallel_runs(cost, serial, body);
}

// Cuts the columns [0, c1 of the last block) into nt ranges of about equal work (the
// rows reaching each column): dx's products, split this way, write disjoint columns
// and read each weight once (a batch split would pack every weight on every thread).
std::vector<int64_t> column_cuts(const std::vector<Block>& bl, int64_t nt) {
  const int64_t cmax = bl.empty() ? 0 : bl.back().c1;
  std::vector<double> work(cmax + 1, 0.0);  // rows reaching column j, as differences
  for (const auto& b : bl) {
    work[0] += static_cast<double>(b.rows());
    work[b.c1] -= static_cast<double>(b.rows());
  }
  double total = 0.0, run = 0.0;
  for (int64_t j = 0; j < cmax; ++j) total += (run += work[j]);
  std::vector<int64_t> cut{0};
  double done = 0.0;
  run = 0.0;
  for (int64_t j = 0; j < cmax && static_cast<int64_t>(cut.size()) < nt; ++j) {
    done += (run += work[j]);
    if (done >= total * static_cast<double>(cut.size()) / static_cast<double>(nt)) cut.push_back(j + 1);
  }
  cut.push_back(cmax);
  return cut;
}

}  // namespace

at::Tensor masked_linear_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                 const at::Tensor& perm_out, const at::Tensor& row_reach, const at::Tensor& blocks,
                                 int64_t activation, bool x_sorted, bool y_sorted,
                                 const std::optional<at::Tensor>& slabs, bool in_place) {
  const at::NoGradGuard no_grad;  // kernels: nothing to record (and the worker threads inherit it)
  check_weights(w_sorted, perm_in, perm_out, blocks, in_place);
  check_float_tensor(x, "x", 2);
  check_same_dtype(x, "x", w_sorted, "weight");
  const int64_t B = x.size(0), O = w_sorted.size(0), I = w_sorted.size(1);
  TORCH_CHECK_VALUE(x.size(1) == I, "x must have shape [B, ", I, "], got ", x.sizes());
  TORCH_CHECK_VALUE(activation >= ml::kNone && activation <= ml::kTanh, "activation must be 0..3, got ", activation);
  if (in_place) x_sorted = y_sorted = true;  // identity permutations: sorted order is the caller's
  if (ml_avx512::runs(in_place, x, row_reach, O)) {  // register tiles instead of BLAS per block
    at::Tensor y = ml_avx512::forward(x, w_sorted, bias, row_reach, python_dispatch({&x, &w_sorted}));
    activate_(y, activation);
    return y;
  }
  const std::vector<Block> bl = read_blocks(blocks, slabs);
  const at::Tensor xc = x.contiguous();
  at::Tensor bias_s;
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(*bias, "bias", w_sorted, "weight");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == O, "bias must have shape [", O, "]");
    bias_s = in_place ? *bias : bias->index_select(0, perm_out);
  }
  int64_t cmax = 0;
  for (const auto& b : bl) cmax = std::max(cmax, b.c1);
  const int64_t z = bl.empty() ? O : bl[0].r0;  // sorted rows [0, z) reach no input
  at::Tensor ys = at::empty({B, O}, x.options());
  at::Tensor xs = xc;
  if (!x_sorted) {
    xs = at::empty({B, cmax}, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_linear_gather", [&] {
      gather_columns<scalar_t>(xc.const_data_ptr<scalar_t>(), I, perm_in.const_data_ptr<int64_t>(), cmax,
                               xs.mutable_data_ptr<scalar_t>(), B);
    });
  }
  // Rows [0, z) reach no input: the bias (or zero), activated.
  if (z > 0) {
    at::Tensor out = ys.narrow(1, 0, z);
    if (bias_s.defined()) {
      out.copy_(bias_s.narrow(0, 0, z).expand({B, z}));
    } else {
      out.zero_();
    }
    activate_(out, activation);
  }
  // Each block: its bias columns, the matmuls accumulating onto them, its activation,
  // while the block's outputs are in cache; the blocks split over the threads.
  parallel_blocks(bl, python_dispatch({&x, &w_sorted, &ys}), [&](int64_t k) {
    const Block& b = bl[k];
    at::Tensor out = ys.narrow(1, b.r0, b.rows());
    bool written = bias_s.defined();
    if (written) out.copy_(bias_s.narrow(0, b.r0, b.rows()).expand({B, b.rows()}));
    if (b.c0 > 0) {
      const at::Tensor wt = w_sorted.narrow(0, b.r0, b.rows()).narrow(1, 0, b.c0).t();
      if (written) {
        out.addmm_(xs.narrow(1, 0, b.c0), wt);
      } else {
        at::mm_out(out, xs.narrow(1, 0, b.c0), wt);
      }
      written = true;
    }
    if (b.wd() > 0) {
      const at::Tensor st = slab_of(slabs, b).t();
      if (written) {
        out.addmm_(xs.narrow(1, b.c0, b.wd()), st);
      } else {
        at::mm_out(out, xs.narrow(1, b.c0, b.wd()), st);
      }
      written = true;
    }
    if (!written) out.zero_();
    activate_(out, activation);
  });
  if (y_sorted) return ys;
  at::Tensor y = at::empty({B, O}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_linear_scatter", [&] {
    const int64_t* po = perm_out.const_data_ptr<int64_t>();
    const scalar_t* src = ys.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 8192 / std::max<int64_t>(O, 1)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < O; ++i) dst[b * O + po[i]] = src[b * O + i];
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& row_reach, const at::Tensor& blocks,
    int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db,
    const std::optional<at::Tensor>& slabs, bool in_place) {
  const at::NoGradGuard no_grad;
  check_weights(w_sorted, perm_in, perm_out, blocks, in_place);
  check_float_tensor(grad_y, "grad_y", 2);
  check_float_tensor(x, "x", 2);
  const int64_t B = x.size(0), O = w_sorted.size(0), I = w_sorted.size(1);
  TORCH_CHECK_VALUE(x.size(1) == I, "x must have shape [B, ", I, "], got ", x.sizes());
  TORCH_CHECK_VALUE(grad_y.size(0) == B && grad_y.size(1) == O, "grad_y must have shape [", B, ", ", O, "]");
  TORCH_CHECK_VALUE(activation == ml::kNone || (y.has_value() && y->defined()),
                    "y (the forward output) is required for an activation");
  if (in_place) x_sorted = y_sorted = true;
  const bool avx512 = ml_avx512::runs(in_place, x, row_reach, O);
  const std::vector<Block> bl = avx512 ? std::vector<Block>() : read_blocks(blocks, slabs);
  const at::Tensor gy = grad_y.contiguous().to(x.scalar_type());
  const at::Tensor yc = activation == ml::kNone ? at::Tensor() : y->contiguous();
  int64_t cmax = 0;
  for (const auto& b : bl) cmax = std::max(cmax, b.c1);
  // d loss / d pre-activation, in sorted unit order.
  const at::Tensor gpre = activation_backward(gy, yc, activation).contiguous();
  at::Tensor gs = gpre;
  at::Tensor dx, dw, db;
  const int64_t* po = perm_out.const_data_ptr<int64_t>();
  const int64_t* pi = perm_in.const_data_ptr<int64_t>();
  const int64_t* reach = row_reach.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_linear_backward", [&] {
    if (!y_sorted) {
      gs = at::empty({B, O}, x.options());
      gather_columns<scalar_t>(gpre.const_data_ptr<scalar_t>(), O, po, O, gs.mutable_data_ptr<scalar_t>(), B);
    }
    if (need_db) {
      if (y_sorted && !in_place) {
        db = at::empty({O}, x.options());
        db.index_copy_(0, perm_out, gs.sum(0));
      } else {
        db = gpre.sum(0);
      }
    }
    if (!need_dx && !need_dw) return;
    const bool serial = python_dispatch({&x, &grad_y, &w_sorted});
    const at::Tensor xc = x.contiguous();
    if (avx512) {
      std::tie(dx, dw) = ml_avx512::backward(gs, xc, w_sorted, row_reach, need_dx, need_dw, serial);
      return;
    }
    at::Tensor xs = xc;
    if (need_dw && !x_sorted) {
      xs = at::empty({B, cmax}, x.options());
      gather_columns<scalar_t>(xc.const_data_ptr<scalar_t>(), I, pi, cmax, xs.mutable_data_ptr<scalar_t>(), B);
    }
    // dx in sorted input order: written straight into dx when the caller works sorted.
    at::Tensor dxs;
    if (need_dx) {
      dx = at::empty({B, I}, x.options());
      dxs = x_sorted ? dx : at::empty({B, cmax}, x.options());
      if (x_sorted && cmax < I) dx.narrow(1, cmax, I - cmax).zero_();  // inputs no row reaches
      if (!x_sorted) dx.zero_();
    }
    if (need_dx) {
      const int64_t nt = serial || at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), 8);
      const std::vector<int64_t> cut = column_cuts(bl, nt);
      auto range = [&](int64_t t) {  // every block's product over the columns [lo, hi) of cut t
        const int64_t lo = cut[t], hi = cut[t + 1];
        at::Tensor d = dxs.narrow(1, lo, hi - lo);
        d.zero_();
        for (const auto& b : bl) {
          const at::Tensor gb = gs.narrow(1, b.r0, b.rows());
          const int64_t e = std::min(hi, b.c0);  // [lo, e): on w as stored; [s, f): on the slab
          if (e > lo) d.narrow(1, 0, e - lo).addmm_(gb, w_sorted.narrow(0, b.r0, b.rows()).narrow(1, lo, e - lo));
          const int64_t s0 = std::max(lo, b.c0), f = std::min(hi, b.c1);
          if (f > s0) d.narrow(1, s0 - lo, f - s0).addmm_(gb, slab_of(slabs, b).narrow(1, s0 - b.c0, f - s0));
        }
      };
      if (cut.size() <= 2) {
        range(0);
      } else {
        per_thread(static_cast<int64_t>(cut.size()) - 1, range);
      }
    }
    if (need_dx && !x_sorted) {
      const scalar_t* s = dxs.const_data_ptr<scalar_t>();
      scalar_t* d = dx.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, B, std::max<int64_t>(1, 8192 / std::max<int64_t>(cmax, 1)), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          for (int64_t j = 0; j < cmax; ++j) d[b * I + pi[j]] = s[b * cmax + j];
        }
      });
    }
    if (!need_dw) return;
    // grad W, exactly zero outside the staircase. in_place: each block's rows written in
    // the caller's layout by the matmul, then their tails past the reach zeroed (the
    // masked part of the slab, which the matmul wrote, and the columns past the block).
    // Otherwise each block into a small sorted buffer, then its rows put in the caller's
    // layout by a gather over the row (sorted position inv_in[u] of input u; zero past
    // the reach): sequential stores, reads from the buffer row in L1.
    dw = at::empty({O, I}, x.options());
    scalar_t* d = dw.mutable_data_ptr<scalar_t>();
    std::vector<int32_t> inv_in;  // sorted position of each input (int32: a narrower gather index)
    if (!in_place) {
      TORCH_CHECK_VALUE(I < (int64_t(1) << 31), "masked_linear: too many inputs (", I, ")");
      inv_in.resize(I);
      for (int64_t j = 0; j < I; ++j) inv_in[pi[j]] = static_cast<int32_t>(j);
    }
    const int64_t z = bl.empty() ? O : bl[0].r0;  // sorted rows [0, z) reach no input
    for (int64_t i = 0; i < z; ++i) {
      scalar_t* row = d + (in_place ? i : po[i]) * I;
      std::fill(row, row + I, scalar_t(0));
    }
    parallel_blocks(bl, serial, [&](int64_t k) {
      const Block& b = bl[k];
      const at::Tensor gbt = gs.narrow(1, b.r0, b.rows()).t();
      if (in_place) {
        at::Tensor out = dw.narrow(0, b.r0, b.rows()).narrow(1, 0, b.c1);
        at::mm_out(out, gbt, xs.narrow(1, 0, b.c1));
        for (int64_t i = b.r0; i < b.r1; ++i) std::fill(d + i * I + reach[i], d + (i + 1) * I, scalar_t(0));
        return;
      }
      // [rows, c1 + 1]: column c1 stays zero, the target of every input past a row's reach.
      at::Tensor buf = at::empty({b.rows(), b.c1 + 1}, x.options());
      at::Tensor prod = buf.narrow(1, 0, b.c1);
      at::mm_out(prod, gbt, xs.narrow(1, 0, b.c1));
      scalar_t* s = buf.mutable_data_ptr<scalar_t>();
      const int32_t* inv = inv_in.data();
      for (int64_t i = b.r0; i < b.r1; ++i) {
        scalar_t* src = s + (i - b.r0) * (b.c1 + 1);
        const int64_t r = reach[i];
        std::fill(src + r, src + b.c1 + 1, scalar_t(0));
        scalar_t* dst = d + po[i] * I;
        const int32_t pad = static_cast<int32_t>(r);
        for (int64_t u = 0; u < I; ++u) dst[u] = src[std::min(inv[u], pad)];
      }
    });
  });
  return {dx, dw, db};
}

}  // namespace af
