// The masked layer's training products on degree-sorted fp32 weights with AVX-512
// register tiles (docs/DESIGN.md section 4; interface in masked_linear_avx512.h).
//
// Each product is C[m, n] = sum_k A[m, k] B[k, n] over a tile of MR rows by NV
// 16-float vectors, with A broadcast from memory and B loaded as vectors; the
// staircase (row i reaches the inputs [0, reach[i]), reach non-decreasing) decides
// which tiles exist and masks their ragged edge in registers:
//   forward  y.T [O, B] = W [O, I] @ x.T: m = unit, n = batch, k = input; a tile of
//            rows reaches [0, reach of its last row), the rows that end earlier skip
//            the last steps; x.T is packed by 16 x 16 register transposes, and each
//            tile goes back to y [B, O] (+ bias) through one more.
//   grad x   dx [B, I] = g [B, O] @ (W * M): m = batch, n = input, k = unit; the units
//            reaching a 32-input panel are a suffix of the rows, packed once per panel
//            with zeros past each row's reach (g packed by batch tiles, in chunks of
//            kKC units that stay in L1).
//   grad W   dw [O, I] = g.T @ x: m = unit, n = input, k = batch; stored through a lane
//            mask that is zero past each row's reach, the rest of the row filled with
//            zeros; by input panels (a panel of x in L1) while g fits L2, else by tiles
//            of units (their g in L1).
// Threads take contiguous runs of equal work (rows or panels), one region per product.
// The tiles themselves: masked_linear_avx512_tiles.inc.
#include "masked_linear/masked_linear_avx512.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "common/ops.h"
#include "masked_linear/masked_linear_threads.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AF_ML_AVX512 1
#include <immintrin.h>
#endif

namespace af {
namespace ml_avx512 {

bool usable() {
#ifdef AF_ML_AVX512
  static const bool ok = [] {  // the AVX-512 ISA (common/cpu_isa.h, ARMODEL_FAST_ISA included) and the
    __builtin_cpu_init();       // bit-manipulation features the target pragma below also compiles for
    return isa() == Isa::kAvx512 && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  }();
  return ok;
#else
  return false;
#endif
}

bool runs(bool in_place, const at::Tensor& x, const at::Tensor& row_reach, int64_t O) {
  if (!in_place || x.scalar_type() != at::kFloat || !usable()) return false;
  TORCH_CHECK_VALUE(row_reach.scalar_type() == at::kLong && row_reach.is_contiguous() && row_reach.numel() == O,
                    "row_reach must be a contiguous int64 tensor of length ", O);
  const int64_t* reach = row_reach.const_data_ptr<int64_t>();  // a staircase within the inputs
  for (int64_t i = 0; i < O; ++i) {
    TORCH_CHECK_VALUE(reach[i] >= (i > 0 ? reach[i - 1] : 0) && reach[i] <= x.size(1),
                      "row_reach must be non-decreasing within [0, ", x.size(1), "], got ", reach[i], " at row ", i);
  }
  return true;
}

}  // namespace ml_avx512

const char* masked_linear_train_kernels() { return ml_avx512::usable() ? "avx512" : "blas"; }

}  // namespace af

#ifndef AF_ML_AVX512  // usable() is false: the entry points above refuse before calling these
namespace af {
namespace ml_avx512 {
void forward(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, const int64_t*, const float*,
             float*, bool, Order) {}
void grad_input(const float*, int64_t, const float*, int64_t, int64_t, int64_t, const int64_t*, float*, bool, Order) {}
void grad_weight(const float*, const float*, int64_t, int64_t, int64_t, int64_t, const int64_t*, float*, bool,
                 Order) {}
}  // namespace ml_avx512
}  // namespace af
#else
#pragma GCC push_options
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12: the intrinsics' undefined pass-through operands
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")

namespace af {
namespace ml_avx512 {
namespace {

#include "masked_linear/masked_linear_avx512_tiles.inc"

// First row reaching any input (rows before it are all-zero rows of W * M).
int64_t first_reaching(const int64_t* reach, int64_t O) {
  return std::upper_bound(reach, reach + O, int64_t(0)) - reach;
}

// dst[b, order[k]] = src[b, k] for b < B, k < n (rows of n floats): sorted columns back to the caller's.
void scatter_columns(const float* src, int64_t B, int64_t n, const int32_t* order, float* dst, bool serial) {
  ml_threads::parallel_runs(std::vector<double>(B, 1.0), serial, [&](int64_t b) {
    for (int64_t k = 0; k < n; ++k) dst[b * n + order[k]] = src[b * n + k];
  });
}

// grad_input's products where the inputs are out of order: dx [B, I] (sorted inputs) = g @ (W * M)
// by chunks of kKC units. Each chunk's rows of W are gathered whole into sorted order (a row read
// once, not once per 32-input panel through gathers that each touch 16 lines), then every panel the
// chunk reaches adds its product; gt: g packed by batch tiles as in grad_input.
void unsorted_grad_input(const float* gt, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I,
                         const int64_t* reach, float* dx, bool serial, Order order) {
  std::fill(dx, dx + B * I, 0.0f);
  for (int64_t c0 = first_reaching(reach, O); c0 < O; c0 += kKC) {
    const int64_t kc = std::min<int64_t>(kKC, O - c0), cend = reach[c0 + kc - 1];
    const int64_t ld = (cend + kNR - 1) / kNR * kNR;  // the chunk's rows, zero-padded to whole panels
    const std::unique_ptr<float[]> block = scratch(kc * ld);
    ml_threads::parallel_runs(std::vector<double>(kc, 1.0), serial, [&](int64_t m) {
      float* dst = block.get() + m * ld;
      gather_row(W + order.unit(c0 + m) * ldw, order.in, reach[c0 + m], dst);
      std::fill(dst + (reach[c0 + m] + 15) / 16 * 16, dst + ld, 0.0f);
    });
    const int64_t npanels = ld / kNR;
    std::vector<double> cost;
    for (int64_t p = 0; p < npanels; ++p) {  // the chunk's units reaching the panel
      cost.push_back(static_cast<double>(c0 + kc - (std::upper_bound(reach + c0, reach + c0 + kc, p * kNR) - reach)) + 1);
    }
    ml_threads::parallel_runs(cost, serial, [&](int64_t p) {
      const int64_t k0 = p * kNR, jb = std::upper_bound(reach + c0, reach + c0 + kc, k0) - reach;
      for (int64_t b0 = 0; b0 < B; b0 += kMR) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, B - b0));
        with_rows(rows, [&](auto r) {
          grad_input_tile<decltype(r)::value, 2>(gt + b0 * O + jb * rows, block.get() + (jb - c0) * ld + k0, ld,
                                                 c0 + kc - jb, std::min<int64_t>(kNR, I - k0), dx + b0 * I + k0, I,
                                                 true);
        });
      }
    });
  }
}

}  // namespace

void forward(const float* x, int64_t ldx, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I,
             const int64_t* reach, const float* bias, float* y, bool serial, Order order) {
  const int64_t z = first_reaching(reach, O);
  const int64_t cmax = O > 0 ? reach[O - 1] : 0;
  const int64_t Bp = (B + 15) / 16 * 16;
  const int64_t npanels = (Bp + kNR - 1) / kNR;  // batch panels of 32 rows (the last may have 16)
  auto panel_width = [&](int64_t p) { return std::min<int64_t>(kNR, Bp - p * kNR); };
  // x.T by batch panels: panel p holds [cmax, width] from offset p * 32 * cmax (zero-padded columns),
  // transposed in 16 x 16 blocks.
  const std::unique_ptr<float[]> xt = scratch(cmax * Bp);
  const int64_t kblocks = (cmax + 15) / 16;
  ml_threads::parallel_runs(std::vector<double>(npanels * kblocks, 1.0), serial, [&](int64_t item) {
    const int64_t p = item / kblocks, k0 = (item % kblocks) * 16, b0 = p * kNR, wd = panel_width(p);
    for (int64_t c0 = 0; c0 < wd; c0 += 16) {
      const int rows = static_cast<int>(std::clamp<int64_t>(B - b0 - c0, 0, 16));
      transpose_block(x + (b0 + c0) * ldx, ldx, k0, rows, static_cast<int>(std::min<int64_t>(16, cmax - k0)),
                      xt.get() + b0 * cmax + k0 * wd + c0, wd, order.in);
    }
  });
  // Units out of order: y and the bias in sorted order here, y's columns put back at the end.
  float* const y_out = y;
  std::unique_ptr<float[]> y_sorted, bias_sorted;
  if (order.out) {
    y_sorted = scratch(B * O);
    y = y_sorted.get();
    if (bias) {
      bias_sorted = scratch(O);
      for (int64_t j = 0; j < O; ++j) bias_sorted[j] = bias[order.out[j]];
      bias = bias_sorted.get();
    }
  }
  for (int64_t j = 0; j < z; ++j) {  // units that reach no input: the bias
    for (int64_t b = 0; b < B; ++b) y[b * O + j] = bias ? bias[j] : 0.0f;
  }
  const int64_t ntiles = (O - z + kMR - 1) / kMR;
  std::vector<double> cost;
  for (int64_t t = 0; t < ntiles; ++t) {  // the inputs the tile's last row reaches (+ a tile's fixed cost)
    cost.push_back(static_cast<double>(reach[std::min(O, z + (t + 1) * kMR) - 1]) + 16.0);
  }
  ml_threads::parallel_runs(cost, serial, [&](int64_t t) {
    const int64_t j0 = z + t * kMR;
    const int rows = static_cast<int>(std::min<int64_t>(kMR, O - j0));
    const float* bj = bias ? bias + j0 : nullptr;
    // The tile's rows of W * M in sorted order: W itself, or (degrees out of order) gathered once
    // here into [rows, reach] and read over every batch panel.
    const float* wt = W + j0 * ldw;
    int64_t ldwt = ldw;
    std::unique_ptr<float[]> gathered;
    if (order.in || order.out) {
      ldwt = std::max<int64_t>(16, (reach[j0 + rows - 1] + 15) / 16 * 16);
      gathered = scratch(rows * ldwt);
      for (int m = 0; m < rows; ++m) {
        gather_row(W + order.unit(j0 + m) * ldw, order.in, reach[j0 + m], gathered.get() + m * ldwt);
      }
      wt = gathered.get();
    }
    for (int64_t p = 0; p < npanels; ++p) {
      const int64_t b0 = p * kNR, wd = panel_width(p);
      const float* xp = xt.get() + b0 * cmax;
      with_rows(rows, [&](auto r) {
        if (wd == kNR) {
          forward_tile<decltype(r)::value, 2>(wt, ldwt, reach + j0, xp, wd, bj, y + b0 * O + j0, O, B - b0);
        } else {
          forward_tile<decltype(r)::value, 1>(wt, ldwt, reach + j0, xp, wd, bj, y + b0 * O + j0, O, B - b0);
        }
      });
    }
  });
  if (order.out) scatter_columns(y, B, O, order.out, y_out, serial);
}

void grad_input(const float* g, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I, const int64_t* reach,
                float* dx, bool serial, Order order) {
  const int64_t npanels = (I + kNR - 1) / kNR;
  // Inputs out of order: dx in sorted order here, its columns put back at the end.
  float* const dx_out = dx;
  std::unique_ptr<float[]> dx_sorted;
  if (order.in) {
    dx_sorted = scratch(B * I);
    dx = dx_sorted.get();
  }
  // g by batch tiles: tile t (rows [12 t, 12 t + rows)) is [O, rows] from offset 12 t * O
  const std::unique_ptr<float[]> gt = scratch(B * O);
  ml_threads::parallel_runs(std::vector<double>((B + kMR - 1) / kMR, 1.0), serial, [&](int64_t t) {
    const int64_t b0 = t * kMR, rows = std::min<int64_t>(kMR, B - b0);
    float* dst = gt.get() + b0 * O;
    for (int64_t j = 0; j < O; ++j) {
      const int64_t unit = order.unit(j);
      for (int64_t m = 0; m < rows; ++m) dst[j * rows + m] = g[(b0 + m) * O + unit];
    }
  });
  if (order.in) {  // inputs out of order: by chunks of units instead (unsorted_grad_input), then dx unsorted
    unsorted_grad_input(gt.get(), B, W, ldw, O, I, reach, dx, serial, order);
    scatter_columns(dx, B, I, order.in, dx_out, serial);
    return;
  }
  std::vector<double> cost;
  for (int64_t p = 0; p < npanels; ++p) {
    const int64_t jb = std::upper_bound(reach, reach + O, p * kNR) - reach;
    cost.push_back(static_cast<double>(O - jb) + 4.0);  // the units reaching the panel (+ its packing)
  }
  ml_threads::parallel_runs(cost, serial, [&](int64_t p) {
    const int64_t k0 = p * kNR, width = std::min<int64_t>(kNR, I - k0);
    const int64_t jb = std::upper_bound(reach, reach + O, k0) - reach;  // the units reaching input k0: [jb, O)
    // W * M's panel, packed (a row read once here instead of once per batch tile)
    const std::unique_ptr<float[]> wp = scratch((O - jb) * kNR);
    for (int64_t j = jb; j < O; ++j) {
      const int64_t lim = std::min(reach[j] - k0, width);
      float* dst = wp.get() + (j - jb) * kNR;
      const float* row = W + order.unit(j) * ldw;
      _mm512_storeu_ps(dst, load_lanes(row, nullptr, k0, lim));
      _mm512_storeu_ps(dst + 16, load_lanes(row, nullptr, k0 + 16, lim - 16));
    }
    // the units in chunks of kKC: a chunk's panel and the tile's g stay in L1 over the batch tiles
    for (int64_t c0 = jb; c0 < O || c0 == jb; c0 += kKC) {
      const int64_t kc = std::min<int64_t>(kKC, O - c0);
      for (int64_t b0 = 0; b0 < B; b0 += kMR) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, B - b0));
        with_rows(rows, [&](auto r) {
          grad_input_tile<decltype(r)::value, 2>(gt.get() + b0 * O + c0 * rows, wp.get() + (c0 - jb) * kNR, kNR, kc,
                                                 width, dx + b0 * I + k0, I, c0 > jb);
        });
      }
    }
  });
}

void grad_weight(const float* g, const float* x, int64_t ldx, int64_t B, int64_t O, int64_t I, const int64_t* reach,
                 float* dw, bool serial, Order order) {
  const int64_t z = first_reaching(reach, O);
  const int64_t cmax = O > 0 ? reach[O - 1] : 0;
  const int64_t npanels = (cmax + kNR - 1) / kNR;
  // x by input panels: panel p is [B, 32] from offset p * 32 * B (zeros past the last input)
  const std::unique_ptr<float[]> xp = scratch(npanels * kNR * B);
  ml_threads::parallel_runs(std::vector<double>(npanels, 1.0), serial, [&](int64_t p) {
    const int64_t k0 = p * kNR, wd = std::min<int64_t>(kNR, I - k0);
    float* dst = xp.get() + p * kNR * B;
    for (int64_t b = 0; b < B; ++b) {
      _mm512_storeu_ps(dst + b * kNR, load_lanes(x + b * ldx, order.in, k0, wd));
      _mm512_storeu_ps(dst + b * kNR + 16, load_lanes(x + b * ldx, order.in, k0 + 16, wd - 16));
    }
  });
  auto dw_row = [&](int64_t j) { return dw + order.unit(j) * I; };  // sorted row j of dW
  for (int64_t j = 0; j < z; ++j) std::fill(dw_row(j), dw_row(j) + I, 0.0f);
  const int64_t ntiles = (O - z + kMR - 1) / kMR;
  // tile t's product with x's panel at k0 into dw's rows (dst: dw, its rows through order.out; or, inputs
  // out of order, the tile's [rows, ld] block in sorted order)
  auto tile = [&](const float* gp, int64_t t, int64_t k0, float* dst, int64_t ld, bool block) {
    const int64_t j0 = z + t * kMR;
    with_rows(static_cast<int>(std::min<int64_t>(kMR, O - j0)), [&](auto r) {
      grad_weight_tile<decltype(r)::value, 2>(gp, xp.get() + k0 * B, B, reach + j0, k0, std::min<int64_t>(kNR, I - k0),
                                              dst, ld, block ? 0 : j0, block ? nullptr : order.out);
    });
  };
  auto pack_g = [&](int64_t t, float* dst) {  // g's columns of tile t, [B, rows]
    const int64_t j0 = z + t * kMR;
    const int64_t rows = std::min<int64_t>(kMR, O - j0);
    for (int64_t b = 0; b < B; ++b) {
      _mm512_mask_storeu_ps(dst + b * rows, first_lanes(rows), load_lanes(g + b * O, order.out, j0, rows));
    }
  };
  if (order.in == nullptr && B * (O - z) * 4 <= kPanelFirstBytes) {
    // g packed by tiles fits L2: each panel of 32 inputs over the tiles that reach it (the panel
    // stays in L1); rows before the first such tile are zero there, the rest masked at each reach.
    const std::unique_ptr<float[]> gp = scratch(B * (O - z));
    ml_threads::parallel_runs(std::vector<double>(ntiles, 1.0), serial,
                              [&](int64_t t) { pack_g(t, gp.get() + t * kMR * B); });
    auto first_tile = [&](int64_t k0) {
      return std::min(ntiles, (std::upper_bound(reach, reach + O, k0) - reach - z) / kMR);
    };
    const int64_t all_panels = (I + kNR - 1) / kNR;
    std::vector<double> cost;
    for (int64_t p = 0; p < all_panels; ++p) {  // a tile's product, or (about 0.15 of that) zeroing its rows
      const int64_t t0 = p < npanels ? first_tile(p * kNR) : ntiles;
      cost.push_back(static_cast<double>(ntiles - t0) + 0.15 * static_cast<double>(t0 + z / kMR) + 0.25);
      // (0.15: a [12, 32] block of zeros written against 12 x 32 x B multiply-adds, measured; 0.25 a panel's
      // fixed cost)
    }
    ml_threads::parallel_runs(cost, serial, [&](int64_t p) {
      const int64_t k0 = p * kNR, width = std::min<int64_t>(kNR, I - k0);
      const int64_t t0 = p < npanels ? first_tile(k0) : ntiles;
      for (int64_t j = z; j < std::min(O, z + t0 * kMR); ++j) std::fill(dw_row(j) + k0, dw_row(j) + k0 + width, 0.0f);
      for (int64_t t = t0; t < ntiles; ++t) tile(gp.get() + t * kMR * B, t, k0, dw, I, false);
    });
    return;
  }
  // Else (and wherever the inputs are out of order) each tile of units over the panels it reaches
  // (its columns of g stay in L1, x's panels come from L2), then zeros to the end of its rows; inputs
  // out of order: the tile's rows in sorted order into a block, then each row written whole in the
  // caller's order (scattered stores to dW's lines would each fetch a line, out of the prefetchers' reach).
  std::vector<double> cost;
  for (int64_t t = 0; t < ntiles; ++t) {  // its products, plus (about 0.15 of a product) zeroing the rest
    const double panels = std::ceil(static_cast<double>(reach[std::min(O, z + (t + 1) * kMR) - 1]) / kNR);
    cost.push_back(panels + 0.15 * (static_cast<double>(I) / kNR - panels) + 0.5);
  }
  ml_threads::parallel_runs(cost, serial, [&](int64_t t) {
    const int64_t j0 = z + t * kMR, rows = std::min<int64_t>(kMR, O - j0);
    const std::unique_ptr<float[]> gp = scratch(B * rows);
    pack_g(t, gp.get());
    const int64_t end = std::min(I, (reach[j0 + rows - 1] + kNR - 1) / kNR * kNR);  // panels computed: [0, end)
    if (order.in) {
      const std::unique_ptr<float[]> block = scratch(rows * end);
      for (int64_t k0 = 0; k0 < end; k0 += kNR) tile(gp.get(), t, k0, block.get(), end, true);
      for (int64_t m = 0; m < rows; ++m) unsort_row(block.get() + m * end, order.in_inverse, reach[j0 + m], I, dw_row(j0 + m));
      return;
    }
    for (int64_t k0 = 0; k0 < end; k0 += kNR) tile(gp.get(), t, k0, dw, I, false);
    for (int64_t j = j0; j < j0 + rows; ++j) std::fill(dw_row(j) + end, dw_row(j) + I, 0.0f);
  });
}

}  // namespace ml_avx512
}  // namespace af

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
