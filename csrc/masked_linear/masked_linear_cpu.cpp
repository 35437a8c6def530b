// Masked linear layer on the CPU by staircase blocks (docs/DESIGN.md section 4).
//
// `masked_linear_prepare` sorts the inputs and the outputs by degree (stable
// argsort): the mask of every output unit becomes a prefix [0, reach) of the
// sorted inputs and reach grows with the row. The sorted rows are cut into a
// few blocks (chosen by a small dynamic programme minimising the area kept);
// each block is one BLAS matmul over the inputs its last row reaches. The
// sorted weights W_s are gathered once with the staircase inside each block
// zeroed; nothing ever reads an [out, in] mask, and rows that reach no input
// are skipped. The caller (armodel_fast/ops/masked_linear.py) caches the
// prepared weights while the weights and degrees are unchanged.
//
// Prepared layout: W_s [O, I] (sorted row i = original row perm_out[i], sorted
// column j = original column perm_in[j]; only W_s[i, 0:cols of i's block] is
// written), row_reach [O], blocks [nb, 3] = (row_begin, row_end, cols).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "masked_linear/masked_linear_math.h"
#include "common/ops.h"

namespace af {
namespace {

constexpr int64_t kAlign = 16;          // block boundaries on multiples of 16 sorted rows
constexpr int64_t kMaxCandidates = 256; // at most this many candidate boundaries in the DP

// Row blocks over sorted rows [z, O) (rows before z reach nothing) minimising
// sum(rows_b * reach[last row of b]) + nb * penalty, with at most max_blocks blocks.
std::vector<std::array<int64_t, 3>> choose_blocks(const std::vector<int64_t>& reach, int64_t max_blocks,
                                                  int64_t I) {
  const int64_t O = static_cast<int64_t>(reach.size());
  int64_t z = 0;
  while (z < O && reach[z] == 0) ++z;
  std::vector<std::array<int64_t, 3>> blocks;
  if (z == O) return blocks;
  const int64_t n = O - z;
  int64_t step = std::max<int64_t>(kAlign, (n + kMaxCandidates - 1) / kMaxCandidates);
  step = (step + kAlign - 1) / kAlign * kAlign;
  std::vector<int64_t> cand{z};  // candidate boundaries, ending at O
  for (int64_t p = z + step; p < O; p += step) cand.push_back(p);
  cand.push_back(O);
  const int64_t G = static_cast<int64_t>(cand.size());
  const int64_t K = std::max<int64_t>(1, std::min(max_blocks, G - 1));
  const double penalty = static_cast<double>(n) * static_cast<double>(I) / 64.0;
  const double inf = std::numeric_limits<double>::infinity();
  auto cost = [&](int64_t a, int64_t b) {  // candidate indices a < b
    return static_cast<double>(cand[b] - cand[a]) * static_cast<double>(reach[cand[b] - 1]);
  };
  // best[k][g]: least area covering rows [z, cand[g]) with k blocks.
  std::vector<std::vector<double>> best(K + 1, std::vector<double>(G, inf));
  std::vector<std::vector<int64_t>> from(K + 1, std::vector<int64_t>(G, -1));
  best[0][0] = 0.0;
  for (int64_t k = 1; k <= K; ++k) {
    for (int64_t g = 1; g < G; ++g) {
      for (int64_t q = k - 1; q < g; ++q) {
        if (best[k - 1][q] == inf) continue;
        const double c = best[k - 1][q] + cost(q, g);
        if (c < best[k][g]) {
          best[k][g] = c;
          from[k][g] = q;
        }
      }
    }
  }
  int64_t kbest = 1;
  for (int64_t k = 1; k <= K; ++k) {
    if (best[k][G - 1] + k * penalty < best[kbest][G - 1] + kbest * penalty) kbest = k;
  }
  for (int64_t k = kbest, g = G - 1; k > 0; --k) {
    const int64_t q = from[k][g];
    blocks.push_back({cand[q], cand[g], reach[cand[g] - 1]});
    g = q;
  }
  std::reverse(blocks.begin(), blocks.end());
  return blocks;
}

template <typename scalar_t>
void gather_weights(const at::Tensor& weight, const int64_t* pin, const int64_t* pout, const int64_t* reach,
                    const std::vector<std::array<int64_t, 3>>& blocks, at::Tensor& ws) {
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), I = ws.size(1);
  scalar_t* out = ws.mutable_data_ptr<scalar_t>();
  for (const auto& b : blocks) {
    at::parallel_for(b[0], b[1], 16, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const scalar_t* src = w + pout[i] * s0;
        scalar_t* dst = out + i * I;
        const int64_t r = reach[i];
        for (int64_t j = 0; j < r; ++j) dst[j] = src[pin[j] * s1];
        for (int64_t j = r; j < b[2]; ++j) dst[j] = scalar_t(0);
      }
    });
  }
}

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

void check_prepared(const at::Tensor& ws, const at::Tensor& perm_in, const at::Tensor& perm_out,
                    const at::Tensor& blocks) {
  check_float_tensor(ws, "w_sorted", 2);
  check_contiguous(ws, "w_sorted");
  for (const auto* t : {&perm_in, &perm_out, &blocks}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "prepared permutations/blocks must be int64");
    check_contiguous(*t, "prepared permutations/blocks");
  }
  TORCH_CHECK_VALUE(perm_in.numel() == ws.size(1) && perm_out.numel() == ws.size(0),
                    "prepared permutations do not match w_sorted");
  TORCH_CHECK_VALUE(blocks.dim() == 2 && blocks.size(1) == 3, "blocks must have shape [nb, 3]");
}

int64_t max_cols(const at::Tensor& blocks) {
  const int64_t* b = blocks.const_data_ptr<int64_t>();
  int64_t c = 0;
  for (int64_t k = 0; k < blocks.size(0); ++k) c = std::max(c, b[3 * k + 2]);
  return c;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_linear_prepare(
    const at::Tensor& weight, const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict,
    int64_t max_blocks) {
  check_float_tensor(weight, "weight", 2);
  TORCH_CHECK_VALUE(weight.device().is_cpu(), "weight must be a CPU tensor, got ", weight.device());
  for (const auto& [t, name] : {std::pair{&in_degrees, "in_degrees"}, std::pair{&out_degrees, "out_degrees"}}) {
    check_defined(*t, name);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1, name, " must be 1-D, got shape ", t->sizes());
  }
  const int64_t O = weight.size(0), I = weight.size(1);
  TORCH_CHECK_VALUE(in_degrees.numel() == I, "in_degrees must have length ", I, ", got ", in_degrees.numel());
  TORCH_CHECK_VALUE(out_degrees.numel() == O, "out_degrees must have length ", O, ", got ", out_degrees.numel());
  TORCH_CHECK_VALUE(max_blocks >= 1, "max_blocks must be >= 1, got ", max_blocks);

  auto [in_sorted, perm_in] = at::sort(in_degrees.cpu(), /*stable=*/true, 0, false);
  auto [out_sorted, perm_out] = at::sort(out_degrees.cpu(), /*stable=*/true, 0, false);
  in_sorted = in_sorted.contiguous();
  out_sorted = out_sorted.contiguous();
  perm_in = perm_in.contiguous();
  perm_out = perm_out.contiguous();
  const int64_t* sin = in_sorted.const_data_ptr<int64_t>();
  const int64_t* sout = out_sorted.const_data_ptr<int64_t>();

  at::Tensor row_reach = at::empty({O}, perm_out.options());
  int64_t* reach = row_reach.mutable_data_ptr<int64_t>();
  for (int64_t i = 0, j = 0; i < O; ++i) {  // two pointers: reach grows with the row
    while (j < I && ml::connected(sout[i], sin[j], strict)) ++j;
    reach[i] = j;
  }
  const auto blocks = choose_blocks(std::vector<int64_t>(reach, reach + O), max_blocks, I);
  at::Tensor blocks_t = at::empty({static_cast<int64_t>(blocks.size()), 3}, perm_out.options());
  for (size_t k = 0; k < blocks.size(); ++k) {
    for (int c = 0; c < 3; ++c) blocks_t.mutable_data_ptr<int64_t>()[3 * k + c] = blocks[k][c];
  }

  at::Tensor ws = at::empty({O, I}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "masked_linear_prepare", [&] {
    gather_weights<scalar_t>(weight, perm_in.const_data_ptr<int64_t>(), perm_out.const_data_ptr<int64_t>(), reach,
                             blocks, ws);
  });
  return {ws, perm_in, perm_out, row_reach, blocks_t};
}

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

at::Tensor masked_linear_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                 const at::Tensor& perm_out, const at::Tensor& row_reach, const at::Tensor& blocks,
                                 int64_t activation, bool x_sorted, bool y_sorted) {
  check_prepared(w_sorted, perm_in, perm_out, blocks);
  check_float_tensor(x, "x", 2);
  check_same_dtype(x, "x", w_sorted, "weight");
  const int64_t B = x.size(0), O = w_sorted.size(0), I = w_sorted.size(1);
  TORCH_CHECK_VALUE(x.size(1) == I, "x must have shape [B, ", I, "], got ", x.sizes());
  TORCH_CHECK_VALUE(activation >= ml::kNone && activation <= ml::kTanh, "activation must be 0..3, got ", activation);
  const at::Tensor xc = x.contiguous();
  at::Tensor bias_s;
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(*bias, "bias", w_sorted, "weight");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == O, "bias must have shape [", O, "]");
    bias_s = bias->index_select(0, perm_out);
  }
  const int64_t cmax = max_cols(blocks);
  const int64_t nb = blocks.size(0);
  const int64_t* bl = blocks.const_data_ptr<int64_t>();
  const int64_t z = nb > 0 ? bl[0] : O;  // sorted rows [0, z) reach no input
  at::Tensor ys = at::empty({B, O}, x.options());
  at::Tensor xs = xc;
  if (!x_sorted) {
    xs = at::empty({B, cmax}, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_linear_gather", [&] {
      gather_columns<scalar_t>(xc.const_data_ptr<scalar_t>(), I, perm_in.const_data_ptr<int64_t>(), cmax,
                               xs.mutable_data_ptr<scalar_t>(), B);
    });
  }
  // Few parallel regions (they cost a scheduler time slice each on a busy machine):
  // the bias broadcast once, one matmul per block accumulating onto it, one activation.
  if (bias_s.defined()) {
    ys.copy_(bias_s.expand({B, O}));
  } else if (z > 0) {
    ys.narrow(1, 0, z).zero_();  // rows that reach no input
  }
  for (int64_t k = 0; k < nb; ++k) {
    const int64_t r0 = bl[3 * k], r1 = bl[3 * k + 1], c = bl[3 * k + 2];
    at::Tensor out = ys.narrow(1, r0, r1 - r0);
    const at::Tensor wt = w_sorted.narrow(0, r0, r1 - r0).narrow(1, 0, c).t();
    if (bias_s.defined()) {
      out.addmm_(xs.narrow(1, 0, c), wt);
    } else {
      at::mm_out(out, xs.narrow(1, 0, c), wt);
    }
  }
  activate_(ys, activation);
  if (y_sorted) return ys;
  at::Tensor y = at::empty({B, O}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_linear_scatter", [&] {
    const int64_t* po = perm_out.const_data_ptr<int64_t>();
    const scalar_t* src = ys.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 8192 / O), [&](int64_t b0, int64_t b1) {
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
    int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db) {
  check_prepared(w_sorted, perm_in, perm_out, blocks);
  check_float_tensor(grad_y, "grad_y", 2);
  check_float_tensor(x, "x", 2);
  const int64_t B = x.size(0), O = w_sorted.size(0), I = w_sorted.size(1);
  TORCH_CHECK_VALUE(x.size(1) == I, "x must have shape [B, ", I, "], got ", x.sizes());
  TORCH_CHECK_VALUE(grad_y.size(0) == B && grad_y.size(1) == O, "grad_y must have shape [", B, ", ", O, "]");
  TORCH_CHECK_VALUE(activation == ml::kNone || (y.has_value() && y->defined()),
                    "y (the forward output) is required for an activation");
  const at::Tensor gy = grad_y.contiguous().to(x.scalar_type());
  const at::Tensor yc = activation == ml::kNone ? at::Tensor() : y->contiguous();
  const int64_t cmax = max_cols(blocks);
  // d loss / d pre-activation, in sorted unit order.
  const at::Tensor gpre = activation_backward(gy, yc, activation).contiguous();
  at::Tensor gs = gpre;
  at::Tensor dx, dw, db;
  const int64_t* bl = blocks.const_data_ptr<int64_t>();
  const int64_t* po = perm_out.const_data_ptr<int64_t>();
  const int64_t* pi = perm_in.const_data_ptr<int64_t>();
  const int64_t* reach = row_reach.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_linear_backward", [&] {
    if (!y_sorted) {
      gs = at::empty({B, O}, x.options());
      gather_columns<scalar_t>(gpre.const_data_ptr<scalar_t>(), O, po, O, gs.mutable_data_ptr<scalar_t>(), B);
    }
    if (need_db) {
      if (y_sorted) {
        db = at::empty({O}, x.options());
        db.index_copy_(0, perm_out, gs.sum(0));
      } else {
        db = gpre.sum(0);
      }
    }
    if (!need_dx && !need_dw) return;
    const at::Tensor xc = x.contiguous();
    at::Tensor xs = xc;
    if (need_dw && !x_sorted) {
      xs = at::empty({B, cmax}, x.options());
      gather_columns<scalar_t>(xc.const_data_ptr<scalar_t>(), I, pi, cmax, xs.mutable_data_ptr<scalar_t>(), B);
    }
    // dx in sorted input order: written straight into dx when the caller works sorted.
    at::Tensor dxs;
    if (need_dx) {
      dx = at::zeros({B, I}, x.options());
      dxs = x_sorted ? dx : at::zeros({B, cmax}, x.options());
    }
    at::Tensor dws = need_dw ? at::empty({O, cmax}, x.options()) : at::Tensor();
    for (int64_t k = 0; k < blocks.size(0); ++k) {
      const int64_t r0 = bl[3 * k], r1 = bl[3 * k + 1], c = bl[3 * k + 2];
      const at::Tensor gb = gs.narrow(1, r0, r1 - r0);
      if (need_dx) {
        at::Tensor out = dxs.narrow(1, 0, c);
        out.addmm_(gb, w_sorted.narrow(0, r0, r1 - r0).narrow(1, 0, c));
      }
      if (need_dw) {
        at::Tensor out = dws.narrow(0, r0, r1 - r0).narrow(1, 0, c);
        at::mm_out(out, gb.t(), xs.narrow(1, 0, c));
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
    if (need_dw) {
      // Scatter to the user's layout, masked: zero each row, then write its reach
      // (sequential reads, stores within one row, which stays in L1).
      dw = at::empty({O, I}, x.options());
      const scalar_t* s = dws.const_data_ptr<scalar_t>();
      scalar_t* d = dw.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, O, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const scalar_t* src = s + i * cmax;
          scalar_t* dst = d + po[i] * I;
          const int64_t r = reach[i];
          std::fill(dst, dst + I, scalar_t(0));
          for (int64_t j = 0; j < r; ++j) dst[pi[j]] = src[j];
        }
      });
    }
  });
  return {dx, dw, db};
}

}  // namespace af
