// CPU tile-reference of the CUDA masked linear kernels: the same tiles, in the
// same order, with the same ml::MaskedProduct decisions (k range, tile kinds,
// per-element mask on load, epilogue) and the same operand-slot mapping, run
// serially; and the same torch glue (masked_linear_glue.h) around them. Not a
// fast path: it exists so that the CPU test suite checks what the GPU runs.
#include <vector>

#include "masked_linear/masked_linear_glue.h"
#include "common/ops.h"

namespace af {
namespace {

// masked_product_kernel of masked_linear_cuda.cu, one C tile at a time.
template <typename T>
void run_product(const ml::MaskedProduct<T>& p, T* c) {
  constexpr int BM = ml::kTileM, BN = ml::kTileN, BK = ml::kTileK;
  std::vector<T> As(BK * BM), Bs(BK * BN), acc(BM * BN);
  const bool a_kc = p.a_ks == 1, b_kc = p.b_ks == 1;
  for (int64_t m0 = 0; m0 < p.M; m0 += BM) {
    for (int64_t n0 = 0; n0 < p.N; n0 += BN) {
      const int64_t m1 = std::min<int64_t>(m0 + BM, p.M), n1 = std::min<int64_t>(n0 + BN, p.N);
      const ml::TileKind c_kind = p.c_tile(m0, m1, n0, n1);
      std::fill(acc.begin(), acc.end(), T(0));
      if (c_kind != ml::kTileZero) {
        int64_t k_begin, k_end;
        p.k_range(n0, n1, &k_begin, &k_end);
        for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
          const int64_t k1 = std::min<int64_t>(k0 + BK, p.K);
          const ml::TileKind b_kind = p.b_tile(n0, n1, k0, k1);
          if (b_kind == ml::kTileZero) continue;
          for (int e = 0; e < BM * BK; ++e) {
            int r, k;
            ml::tile_slot(e, a_kc, BM, &r, &k);
            As[k * BM + r] = p.load_a(m0 + r, k0 + k);
          }
          for (int e = 0; e < BN * BK; ++e) {
            int r, k;
            ml::tile_slot(e, b_kc, BN, &r, &k);
            Bs[k * BN + r] = p.load_b(b_kind, n0 + r, k0 + k);
          }
          for (int k = 0; k < BK; ++k)
            for (int r = 0; r < BM; ++r)
              for (int q = 0; q < BN; ++q) acc[r * BN + q] += As[k * BM + r] * Bs[k * BN + q];
        }
      }
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = n0; n < n1; ++n) c[m * p.N + n] = p.epilogue(c_kind, m, n, acc[(m - m0) * BN + (n - n0)]);
    }
  }
}

struct TileRefKernels {
  template <typename T>
  static void run(const ml_glue::Shape& s, int which, const at::Tensor& a, const at::Tensor& b,
                  const at::Tensor& bias, at::Tensor& c) {
    run_product<T>(ml::masked_product<T>(which, s.B, s.O, s.I, a.const_data_ptr<T>(), b.const_data_ptr<T>(),
                                         bias.defined() ? bias.const_data_ptr<T>() : nullptr, s.in_sorted,
                                         s.out_sorted, s.strict, s.act),
                   c.mutable_data_ptr<T>());
  }
  static void dispatch(const ml_glue::Shape& s, int which, const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& bias, at::Tensor& c) {
    if (s.is_double) {
      run<double>(s, which, a, b, bias, c);
    } else {
      run<float>(s, which, a, b, bias, c);
    }
  }
  void forward(const ml_glue::Shape& s, const at::Tensor& xs, const at::Tensor& ws, const at::Tensor& bias_s,
               at::Tensor& ys) const {
    dispatch(s, ml::kForward, xs, ws, bias_s, ys);
  }
  template <typename T>
  static void pre(const ml_glue::Shape& s, const at::Tensor& gys, const at::Tensor& ys, at::Tensor& g,
                  at::Tensor& db_s) {
    const T* gy = gys.const_data_ptr<T>();
    const T* y = ys.defined() ? ys.const_data_ptr<T>() : nullptr;
    T* gp = g.mutable_data_ptr<T>();
    if (s.act != ml::kNone)
      for (int64_t e = 0; e < s.B * s.O; ++e) gp[e] = ml::pre_activation_grad(gy[e], y[e], s.act);
    if (!db_s.defined()) return;
    T* db = db_s.mutable_data_ptr<T>();
    for (int64_t o = 0; o < s.O; ++o) {
      T t = T(0);
      for (int64_t b = 0; b < s.B; ++b) t += gp[b * s.O + o];
      db[o] = t;
    }
  }
  void grad_pre(const ml_glue::Shape& s, const at::Tensor& gys, const at::Tensor& ys, at::Tensor& g,
                at::Tensor& db_s) const {
    if (s.is_double) {
      pre<double>(s, gys, ys, g, db_s);
    } else {
      pre<float>(s, gys, ys, g, db_s);
    }
  }
  void grad_input(const ml_glue::Shape& s, const at::Tensor& g, const at::Tensor& ws, at::Tensor& dxs) const {
    dispatch(s, ml::kGradInput, g, ws, at::Tensor(), dxs);
  }
  void grad_weight(const ml_glue::Shape& s, const at::Tensor& g, const at::Tensor& xs, at::Tensor& dws) const {
    dispatch(s, ml::kGradWeight, g, xs, at::Tensor(), dws);
  }
};

}  // namespace

at::Tensor masked_linear_tileref_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                         const at::Tensor& perm_out, const at::Tensor& in_sorted,
                                         const at::Tensor& out_sorted, bool strict, int64_t activation,
                                         bool x_sorted, bool y_sorted) {
  TileRefKernels k;
  return ml_glue::forward(x, w_sorted, bias, perm_in, perm_out, in_sorted, out_sorted, strict, activation, x_sorted,
                          y_sorted, /*want_cuda=*/false, k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_tileref_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted, const at::Tensor& out_sorted,
    bool strict, int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db) {
  TileRefKernels k;
  return ml_glue::backward(grad_y, x, y, w_sorted, perm_in, perm_out, in_sorted, out_sorted, strict, activation,
                           x_sorted, y_sorted, need_dx, need_dw, need_db, /*want_cuda=*/false, k);
}

}  // namespace af
