// The masked layer's training products on degree-sorted fp32 weights with AVX-512
// register tiles (docs/DESIGN.md section 4; interface in masked_linear_avx512.h).
//
// Each product is C[m, n] = sum_k A[m, k] B[k, n] over a tile of MR rows by NV
// 16-float vectors, with A broadcast from memory and B loaded as vectors; the
// staircase (row i reaches the inputs [0, reach[i]), reach non-decreasing) decides
// which tiles exist and masks their ragged edge in registers:
//   forward  y.T [O, B] = W [O, I] @ x.T: m = unit, n = batch, k = input; a tile of
//            rows reaches [0, reach of its last row), the rows before masked per k;
//            x.T is packed once per call (the only copy).
//   grad x   dx [B, I] = g [B, O] @ W: m = batch, n = input, k = unit; the units
//            reaching a 32-input panel are a suffix of the rows, W's rows are read as
//            they are stored, with masked loads on the rows that end inside the panel.
//   grad W   dw [O, I] = g.T @ x: m = unit, n = input, k = batch; panels past a
//            row's reach are stored as zeros (masked stores), the row's tail filled.
// Threads take contiguous runs of equal work (rows or panels), one region per product.
#include "masked_linear/masked_linear_avx512.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "common/checks.h"
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
  static const bool ok = [] {
    __builtin_cpu_init();
    const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                     __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
    const char* env = std::getenv("ARMODEL_FAST_ISA");  // "avx2" / "base" lower the choice (nade_cpu_common.h)
    return cpu && (env == nullptr || std::string(env) == "avx512");
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
  return true;
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                   const at::Tensor& row_reach, bool serial) {
  TORCH_CHECK(usable(), "masked_linear: the AVX-512 kernels do not run here");
  const int64_t B = x.size(0), O = w.size(0), I = w.size(1);
  const at::Tensor xc = x.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(*bias, "bias", w, "weight");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == O, "bias must have shape [", O, "]");
    bc = bias->contiguous();
  }
  at::Tensor y = at::empty({B, O}, x.options());
  forward(xc.const_data_ptr<float>(), I, B, w.const_data_ptr<float>(), w.stride(0), O, I,
          row_reach.const_data_ptr<int64_t>(), bc.defined() ? bc.const_data_ptr<float>() : nullptr,
          y.mutable_data_ptr<float>(), serial);
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& gs, const at::Tensor& x, const at::Tensor& w,
                                            const at::Tensor& row_reach, bool need_dx, bool need_dw, bool serial) {
  TORCH_CHECK(usable(), "masked_linear: the AVX-512 kernels do not run here");
  const int64_t B = x.size(0), O = w.size(0), I = w.size(1);
  const int64_t* reach = row_reach.const_data_ptr<int64_t>();
  at::Tensor dx, dw;
  if (need_dx) {
    dx = at::empty({B, I}, x.options());
    grad_input(gs.const_data_ptr<float>(), B, w.const_data_ptr<float>(), w.stride(0), O, I, reach,
               dx.mutable_data_ptr<float>(), serial);
  }
  if (need_dw) {
    const at::Tensor xc = x.contiguous();
    dw = at::empty({O, I}, x.options());
    grad_weight(gs.const_data_ptr<float>(), xc.const_data_ptr<float>(), I, B, O, I, reach,
                dw.mutable_data_ptr<float>(), serial);
  }
  return {dx, dw};
}

}  // namespace ml_avx512

const char* masked_linear_train_kernels() { return ml_avx512::usable() ? "avx512" : "blas"; }

}  // namespace af

#ifndef AF_ML_AVX512  // usable() is false: the entry points above refuse before calling these
namespace af {
namespace ml_avx512 {
void forward(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, const int64_t*, const float*,
             float*, bool) {}
void grad_input(const float*, int64_t, const float*, int64_t, int64_t, int64_t, const int64_t*, float*, bool) {}
void grad_weight(const float*, const float*, int64_t, int64_t, int64_t, int64_t, const int64_t*, float*, bool) {}
}  // namespace ml_avx512
}  // namespace af
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")

namespace af {
namespace ml_avx512 {
namespace {

constexpr int kMR = 12;  // tile rows: kMR x 2 accumulators + 2 loaded vectors fit the 32 zmm registers
constexpr int kNR = 32;  // tile columns: 2 vectors
constexpr int64_t kKC = 192;  // reduction chunk: a [kKC, 32] panel and a [kKC, kMR] slice of A fit L1 together

// Mask of the first n (clamped to [0, 16]) lanes.
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// Contiguous runs of items of about equal cost, one per thread (ml_threads::parallel_runs).
template <typename F>
void over_items(const std::vector<double>& cost, bool serial, const F& body) {
  ml_threads::parallel_runs(cost, serial, body);
}

// f(std::integral_constant<int, rows>{}): a tile of 1..kMR rows, its height a compile-time constant.
template <int R = kMR, typename F>
void with_rows(int rows, const F& f) {
  if constexpr (R >= 1) {
    if (rows == R) return f(std::integral_constant<int, R>{});
    with_rows<R - 1>(rows, f);
  }
}

// ---- forward: y.T rows [j0, j0 + MR) x batch columns [b0, b0 + 16 NV) --------------------

template <int MR, int NV>
void forward_tile(const float* W, int64_t ldw, const int64_t* reach, const float* xt, int64_t ldxt, float* yt,
                  int64_t ldyt) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_setzero_ps();
  const int64_t k_all = reach[0], k_end = reach[MR - 1];  // every row reaches [0, k_all)
  for (int64_t k = 0; k < k_all; ++k) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(xt + k * ldxt + 16 * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(W[m * ldw + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(a, b[v], acc[m][v]);
    }
  }
  for (int64_t k = k_all; k < k_end; ++k) {  // the ragged edge: rows that end before k add nothing
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(xt + k * ldxt + 16 * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      if (k >= reach[m]) continue;
      const __m512 a = _mm512_set1_ps(W[m * ldw + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(a, b[v], acc[m][v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(yt + m * ldyt + 16 * v, acc[m][v]);
}


// ---- grad x: dx rows [b0, b0 + MR) x input columns [k0, k0 + 16 NV) -------------------------

// wp [K, 32]: the panel's rows of W * M, packed (zeros past each row's reach); gt [K, MR]: the
// tile's rows of g, transposed.
template <int MR, int NV>
void grad_input_tile(const float* gt, const float* wp, int64_t K, int64_t width, float* dx, int64_t lddx,
                     bool add) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[m][v] = add ? _mm512_maskz_loadu_ps(first_lanes(width - 16 * v), dx + m * lddx + 16 * v) : _mm512_setzero_ps();
  for (int64_t j = 0; j < K; ++j) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(wp + j * kNR + 16 * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(gt[j * MR + m]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(a, b[v], acc[m][v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(dx + m * lddx + 16 * v, first_lanes(width - 16 * v), acc[m][v]);
}


// ---- grad W: dw rows [j0, j0 + MR) x input columns [k0, k0 + 16 NV) --------------------------

// xp [B, 32]: x's panel, packed (zeros past the last input); gp [B, MR]: g's columns of the tile.
template <int MR, int NV>
void grad_weight_tile(const float* gp, const float* xp, int64_t B, const int64_t* reach, int64_t k0, int64_t width,
                      float* dw, int64_t lddw) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)  // the output lines, fetched while the tile computes
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm_prefetch(reinterpret_cast<const char*>(dw + m * lddw + k0 + 16 * v), _MM_HINT_T0);
  for (int64_t b = 0; b < B; ++b) {
    __m512 xv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(xp + b * kNR + 16 * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(gp[b * MR + m]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(a, xv[v], acc[m][v]);
    }
  }
  // zero past each row's reach (the mask), nothing past the layer's last input
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* out = dw + m * lddw + k0 + 16 * v;
      _mm512_mask_storeu_ps(out, first_lanes(width - 16 * v),
                            _mm512_maskz_mov_ps(first_lanes(reach[m] - k0 - 16 * v), acc[m][v]));
    }
}


// First row reaching any input (rows before it are all-zero rows of W * M).
int64_t first_reaching(const int64_t* reach, int64_t O) {
  return std::upper_bound(reach, reach + O, int64_t(0)) - reach;
}

}  // namespace

void forward(const float* x, int64_t ldx, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I,
             const int64_t* reach, const float* bias, float* y, bool serial) {
  const int64_t z = first_reaching(reach, O);
  const int64_t cmax = O > 0 ? reach[O - 1] : 0;
  const int64_t Bp = (B + 15) / 16 * 16;
  const int64_t npanels = (Bp + kNR - 1) / kNR;  // batch panels of 32 columns (the last may have 16)
  auto panel_width = [&](int64_t p) { return std::min<int64_t>(kNR, Bp - p * kNR); };
  // x.T by batch panels: panel p holds [cmax, width] from offset p * 32 * cmax (zero-padded columns).
  std::vector<float> xt(static_cast<size_t>(std::max<int64_t>(cmax * Bp, 1)));
  std::vector<float> yt(static_cast<size_t>(std::max<int64_t>(O * Bp, 1)));  // y.T [O, Bp]
  over_items(std::vector<double>(npanels, 1.0), serial, [&](int64_t p) {
    const int64_t b0 = p * kNR, wd = panel_width(p), nb = std::min(B - b0, wd);
    float* dst = xt.data() + b0 * cmax;
    for (int64_t k = 0; k < cmax; ++k) {
      for (int64_t c = 0; c < nb; ++c) dst[k * wd + c] = x[(b0 + c) * ldx + k];
      for (int64_t c = nb; c < wd; ++c) dst[k * wd + c] = 0.0f;
    }
  });
  std::fill(yt.begin(), yt.begin() + z * Bp, 0.0f);
  const int64_t ntiles = (O - z + kMR - 1) / kMR;
  std::vector<double> cost;
  for (int64_t t = 0; t < ntiles; ++t) cost.push_back(static_cast<double>(reach[std::min(O, z + (t + 1) * kMR) - 1]) + 16.0);
  over_items(cost, serial, [&](int64_t t) {
    const int64_t j0 = z + t * kMR;
    const int rows = static_cast<int>(std::min<int64_t>(kMR, O - j0));
    for (int64_t p = 0; p < npanels; ++p) {
      const int64_t b0 = p * kNR, wd = panel_width(p);
      const float* xp = xt.data() + b0 * cmax;
      with_rows(rows, [&](auto r) {
        if (wd == kNR) {
          forward_tile<decltype(r)::value, 2>(W + j0 * ldw, ldw, reach + j0, xp, wd, yt.data() + j0 * Bp + b0, Bp);
        } else {
          forward_tile<decltype(r)::value, 1>(W + j0 * ldw, ldw, reach + j0, xp, wd, yt.data() + j0 * Bp + b0, Bp);
        }
      });
    }
  });
  over_items(std::vector<double>((B + 7) / 8, 1.0), serial, [&](int64_t c) {  // y = y.T.T + bias
    for (int64_t b = c * 8; b < std::min(B, (c + 1) * 8); ++b) {
      float* dst = y + b * O;
      for (int64_t j = 0; j < O; ++j) dst[j] = yt[j * Bp + b] + (bias ? bias[j] : 0.0f);
    }
  });
}

void grad_input(const float* g, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I, const int64_t* reach,
                float* dx, bool serial) {
  const int64_t npanels = (I + kNR - 1) / kNR;
  // g by batch tiles: tile t (rows [12 t, 12 t + rows)) is [O, rows] from offset 12 t * O
  std::vector<float> gt(static_cast<size_t>(std::max<int64_t>(B * O, 1)));
  over_items(std::vector<double>((B + kMR - 1) / kMR, 1.0), serial, [&](int64_t t) {
    const int64_t b0 = t * kMR, rows = std::min<int64_t>(kMR, B - b0);
    float* dst = gt.data() + b0 * O;
    for (int64_t j = 0; j < O; ++j) {
      for (int64_t m = 0; m < rows; ++m) dst[j * rows + m] = g[(b0 + m) * O + j];
    }
  });
  std::vector<double> cost;
  for (int64_t p = 0; p < npanels; ++p) {
    const int64_t jb = std::upper_bound(reach, reach + O, p * kNR) - reach;
    cost.push_back(static_cast<double>(O - jb) + 4.0);
  }
  over_items(cost, serial, [&](int64_t p) {
    const int64_t k0 = p * kNR, width = std::min<int64_t>(kNR, I - k0);
    const int64_t jb = std::upper_bound(reach, reach + O, k0) - reach;  // the units reaching input k0: [jb, O)
    // W * M's panel, packed (a row read once here instead of once per batch tile)
    thread_local std::vector<float> wp;
    wp.resize(static_cast<size_t>(std::max<int64_t>((O - jb) * kNR, 1)));
    for (int64_t j = jb; j < O; ++j) {
      const int64_t lim = std::min(reach[j] - k0, width);
      float* dst = wp.data() + (j - jb) * kNR;
      std::copy(W + j * ldw + k0, W + j * ldw + k0 + lim, dst);
      std::fill(dst + lim, dst + kNR, 0.0f);
    }
    // the units in chunks of kKC: a chunk's panel and the tile's g stay in L1 over the batch tiles
    for (int64_t c0 = jb; c0 < O || c0 == jb; c0 += kKC) {
      const int64_t kc = std::min<int64_t>(kKC, O - c0);
      for (int64_t b0 = 0; b0 < B; b0 += kMR) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, B - b0));
        with_rows(rows, [&](auto r) {
          grad_input_tile<decltype(r)::value, 2>(gt.data() + b0 * O + c0 * rows, wp.data() + (c0 - jb) * kNR, kc,
                                                 width, dx + b0 * I + k0, I, c0 > jb);
        });
      }
    }
  });
}

void grad_weight(const float* g, const float* x, int64_t ldx, int64_t B, int64_t O, int64_t I, const int64_t* reach,
                 float* dw, bool serial) {
  const int64_t z = first_reaching(reach, O);
  const int64_t cmax = O > 0 ? reach[O - 1] : 0;
  const int64_t npanels = (cmax + kNR - 1) / kNR;
  // x by input panels: panel p is [B, 32] from offset p * 32 * B (zeros past the last input)
  std::vector<float> xp(static_cast<size_t>(std::max<int64_t>(npanels * kNR * B, 1)));
  over_items(std::vector<double>(npanels, 1.0), serial, [&](int64_t p) {
    const int64_t k0 = p * kNR, wd = std::min<int64_t>(kNR, I - k0);
    float* dst = xp.data() + p * kNR * B;
    for (int64_t b = 0; b < B; ++b) {
      std::copy(x + b * ldx + k0, x + b * ldx + k0 + wd, dst + b * kNR);
      std::fill(dst + b * kNR + wd, dst + (b + 1) * kNR, 0.0f);
    }
  });
  for (int64_t j = 0; j < z; ++j) std::fill(dw + j * I, dw + (j + 1) * I, 0.0f);
  const int64_t ntiles = (O - z + kMR - 1) / kMR;
  std::vector<double> cost;
  for (int64_t t = 0; t < ntiles; ++t) cost.push_back(static_cast<double>(reach[std::min(O, z + (t + 1) * kMR) - 1]) + 16.0);
  over_items(cost, serial, [&](int64_t t) {
    const int64_t j0 = z + t * kMR;
    const int rows = static_cast<int>(std::min<int64_t>(kMR, O - j0));
    thread_local std::vector<float> gp;  // g's columns of the tile, [B, rows]
    gp.resize(static_cast<size_t>(std::max<int64_t>(B * rows, 1)));
    for (int64_t b = 0; b < B; ++b) {
      for (int m = 0; m < rows; ++m) gp[b * rows + m] = g[b * O + j0 + m];
    }
    const int64_t end = std::min(I, (reach[j0 + rows - 1] + kNR - 1) / kNR * kNR);  // panels computed: [0, end)
    for (int64_t k0 = 0; k0 < end; k0 += kNR) {
      with_rows(rows, [&](auto r) {
        grad_weight_tile<decltype(r)::value, 2>(gp.data(), xp.data() + k0 * B, B, reach + j0, k0,
                                                std::min<int64_t>(kNR, I - k0), dw + j0 * I, I);
      });
    }
    for (int64_t j = j0; j < j0 + rows; ++j) std::fill(dw + j * I + end, dw + (j + 1) * I, 0.0f);
  });
}

}  // namespace ml_avx512
}  // namespace af

#pragma GCC pop_options
#endif
