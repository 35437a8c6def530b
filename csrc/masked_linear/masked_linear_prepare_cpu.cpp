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
//
// Training path (weights change every step, so no gather per step): when both
// degree vectors are already sorted (identity permutations, as MADE's hidden
// layers and a natural-order input/output layer are), `masked_linear_plan` gives
// blocks [nb, 4] = (row_begin, row_end, c0, c1) with c0 = reach of the block's
// first row (every row of the block reaches [0, c0)) and c1 = reach of its last.
// The forward and backward then run on the caller's W itself (strided sub-matrix
// views: BLAS takes the leading dimension): one matmul over [0, c0) per block on
// W and one over the ragged slab [c0, c1) on a small masked copy of it
// (`masked_linear_slabs`, about 1/nb of W); grad W is written in place and
// zeroed only outside the staircase (`in_place`).
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
  // A block's fixed cost (its matmul calls, their edges) in weight entries: measured on
  // B=128 layers from 784->500 (6-8 blocks best) to 2000->2000 (16 best).
  const double penalty = std::max(4096.0, static_cast<double>(n) * static_cast<double>(I) / 1024.0);
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
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), O = ws.size(0), I = ws.size(1);
  scalar_t* out = ws.mutable_data_ptr<scalar_t>();
  std::vector<int64_t> cols(O, 0);  // each sorted row's width: its block's (rows before the first block: none)
  for (const auto& b : blocks) std::fill(cols.begin() + b[0], cols.begin() + b[1], b[2]);
  at::parallel_for(0, O, 16, [&](int64_t r0, int64_t r1) {  // one parallel region for all blocks
    for (int64_t i = r0; i < r1; ++i) {
      if (cols[i] == 0) continue;
      const scalar_t* src = w + pout[i] * s0;
      scalar_t* dst = out + i * I;
      const int64_t r = reach[i];
      for (int64_t j = 0; j < r; ++j) dst[j] = src[pin[j] * s1];
      std::fill(dst + r, dst + cols[i], scalar_t(0));
    }
  });
}


}  // namespace

namespace {

struct Plan {
  at::Tensor perm_in, perm_out, row_reach;
  std::vector<std::array<int64_t, 3>> blocks;
  bool in_identity = false, out_identity = false;
};

void check_degrees(const at::Tensor& in_degrees, const at::Tensor& out_degrees, int64_t I, int64_t O,
                   int64_t max_blocks) {
  for (const auto& [t, name] : {std::pair{&in_degrees, "in_degrees"}, std::pair{&out_degrees, "out_degrees"}}) {
    check_defined(*t, name);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1, name, " must be 1-D, got shape ", t->sizes());
  }
  TORCH_CHECK_VALUE(in_degrees.numel() == I, "in_degrees must have length ", I, ", got ", in_degrees.numel());
  TORCH_CHECK_VALUE(out_degrees.numel() == O, "out_degrees must have length ", O, ", got ", out_degrees.numel());
  TORCH_CHECK_VALUE(max_blocks >= 1, "max_blocks must be >= 1, got ", max_blocks);
}

bool is_identity(const at::Tensor& perm) {
  const int64_t* p = perm.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < perm.numel(); ++i) {
    if (p[i] != i) return false;
  }
  return true;
}

// Stable degree sort of both sides, each sorted row's reach and the row blocks.
Plan make_plan(const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict, int64_t max_blocks) {
  const int64_t O = out_degrees.numel(), I = in_degrees.numel();
  Plan plan;
  auto [in_sorted, perm_in] = at::sort(in_degrees.cpu(), /*stable=*/true, 0, false);
  auto [out_sorted, perm_out] = at::sort(out_degrees.cpu(), /*stable=*/true, 0, false);
  in_sorted = in_sorted.contiguous();
  out_sorted = out_sorted.contiguous();
  plan.perm_in = perm_in.contiguous();
  plan.perm_out = perm_out.contiguous();
  const int64_t* sin = in_sorted.const_data_ptr<int64_t>();
  const int64_t* sout = out_sorted.const_data_ptr<int64_t>();
  plan.row_reach = at::empty({O}, plan.perm_out.options());
  int64_t* reach = plan.row_reach.mutable_data_ptr<int64_t>();
  for (int64_t i = 0, j = 0; i < O; ++i) {  // two pointers: reach grows with the row
    while (j < I && ml::connected(sout[i], sin[j], strict)) ++j;
    reach[i] = j;
  }
  plan.blocks = choose_blocks(std::vector<int64_t>(reach, reach + O), max_blocks, I);
  plan.in_identity = is_identity(plan.perm_in);
  plan.out_identity = is_identity(plan.perm_out);
  return plan;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_linear_prepare(
    const at::Tensor& weight, const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict,
    int64_t max_blocks) {
  check_float_tensor(weight, "weight", 2);
  TORCH_CHECK_VALUE(weight.device().is_cpu(), "weight must be a CPU tensor, got ", weight.device());
  const int64_t O = weight.size(0), I = weight.size(1);
  check_degrees(in_degrees, out_degrees, I, O, max_blocks);
  Plan plan = make_plan(in_degrees, out_degrees, strict, max_blocks);
  const auto& blocks = plan.blocks;
  at::Tensor blocks_t = at::empty({static_cast<int64_t>(blocks.size()), 3}, plan.perm_out.options());
  for (size_t k = 0; k < blocks.size(); ++k) {
    for (int c = 0; c < 3; ++c) blocks_t.mutable_data_ptr<int64_t>()[3 * k + c] = blocks[k][c];
  }
  at::Tensor ws = at::empty({O, I}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "masked_linear_prepare", [&] {
    gather_weights<scalar_t>(weight, plan.perm_in.const_data_ptr<int64_t>(), plan.perm_out.const_data_ptr<int64_t>(),
                             plan.row_reach.const_data_ptr<int64_t>(), blocks, ws);
  });
  return {ws, plan.perm_in, plan.perm_out, plan.row_reach, blocks_t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, bool> masked_linear_plan(
    const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict, int64_t max_blocks) {
  check_degrees(in_degrees, out_degrees, in_degrees.numel(), out_degrees.numel(), max_blocks);
  Plan plan = make_plan(in_degrees, out_degrees, strict, max_blocks);
  const int64_t* reach = plan.row_reach.const_data_ptr<int64_t>();
  at::Tensor blocks_t = at::empty({static_cast<int64_t>(plan.blocks.size()), 4}, plan.perm_out.options());
  int64_t* bt = blocks_t.mutable_data_ptr<int64_t>();
  for (size_t k = 0; k < plan.blocks.size(); ++k) {
    const auto& b = plan.blocks[k];
    bt[4 * k] = b[0];
    bt[4 * k + 1] = b[1];
    bt[4 * k + 2] = reach[b[0]];
    bt[4 * k + 3] = b[2];
  }
  return {plan.perm_in, plan.perm_out, plan.row_reach, blocks_t, plan.in_identity && plan.out_identity};
}

at::Tensor masked_linear_slabs(const at::Tensor& weight, const at::Tensor& row_reach, const at::Tensor& blocks) {
  check_float_tensor(weight, "weight", 2);
  TORCH_CHECK_VALUE(weight.stride(1) == 1, "weight must have unit column stride");
  TORCH_CHECK_VALUE(blocks.dim() == 2 && blocks.size(1) == 4, "blocks must have shape [nb, 4]");
  const int64_t nb = blocks.size(0);
  const int64_t* bl = blocks.const_data_ptr<int64_t>();
  const int64_t* reach = row_reach.const_data_ptr<int64_t>();
  std::vector<int64_t> off(nb + 1, 0);
  for (int64_t k = 0; k < nb; ++k) off[k + 1] = off[k] + (bl[4 * k + 1] - bl[4 * k]) * (bl[4 * k + 3] - bl[4 * k + 2]);
  at::Tensor slabs = at::empty({off[nb]}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "masked_linear_slabs", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const int64_t ld = weight.stride(0);
    scalar_t* out = slabs.mutable_data_ptr<scalar_t>();
    // One parallel region over the blocks (a region per block cost more than the copies: the
    // slabs are about 1/nb of W).
    at::parallel_for(0, nb, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r0 = bl[4 * k], r1 = bl[4 * k + 1], c0 = bl[4 * k + 2], c1 = bl[4 * k + 3], wd = c1 - c0;
        for (int64_t i = r0; i < r1 && wd > 0; ++i) {
          const scalar_t* src = w + i * ld + c0;
          scalar_t* dst = out + off[k] + (i - r0) * wd;
          const int64_t r = reach[i] - c0;
          std::copy(src, src + r, dst);
          std::fill(dst + r, dst + wd, scalar_t(0));
        }
      }
    });
  });
  return slabs;
}

}  // namespace af
