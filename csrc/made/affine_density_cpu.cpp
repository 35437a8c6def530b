// The affine MADE's density direction on the CPU (docs/DESIGN.md section 4, the affine
// flow's density direction): z = (x - mu) exp(-s), log|det| = -sum s, s the bounded
// log sigma of made_math.h, and its backward, each one pass over [B, D] reading the
// raw outputs (mu, a) interleaved per dimension. armodel_fast/ops/made/affine_density.py
// wraps them in one autograd node.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>

#include "common/checks.h"
#include "common/ops.h"
#include "made/made_math.h"

namespace af {
namespace {

// Rows per task: about 16K elements, so a small flow's [256, 64] runs on one thread.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

void check_pair(const at::Tensor& x, const at::Tensor& raw) {
  check_float_tensor(x, "x", 2);
  check_float_tensor(raw, "raw", 2);
  check_same_dtype(raw, "raw", x, "x");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                    "affine_density: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(raw.size(0) == x.size(0) && raw.size(1) == 2 * x.size(1), "raw must have shape [",
                    x.size(0), ", ", 2 * x.size(1), "], got ", raw.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu() && raw.device().is_cpu(), "affine_density: x and raw must be CPU tensors");
}

// One row's loops, branch-free inside (clip a template argument) so that they vectorise.
// -s into neg_s, s the sampler's log sigma (made_math.h affine_log_sigma).
template <bool kClip, typename T>
void row_neg_log_sigma(const T* __restrict raw, T* __restrict neg_s, int64_t D) {
  constexpr int64_t head = kClip ? made::kAffine : made::kAffineRaw;
  for (int64_t d = 0; d < D; ++d) neg_s[d] = -made::affine_log_sigma<T>(head, raw[2 * d + 1]);
}

// centered = x - mu (kept for the backward instead of z, which the caller may edit) and z.
template <typename T>
void row_z(const T* __restrict x, const T* __restrict raw, const T* __restrict inv_sigma, T* __restrict centered,
           T* __restrict z, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    const T c = x[d] - raw[2 * d];
    centered[d] = c;
    z[d] = c * inv_sigma[d];
  }
}

// dx = gz e, dmu = -dx, da = -(gz z + gl) / (1 + |a| / bound)^2 (or without the factor).
template <bool kClip, typename T>
void row_backward(const T* __restrict gz, T gl, const T* __restrict raw, const T* __restrict inv_sigma,
                  const T* __restrict centered, T* __restrict gx, T* __restrict graw, int64_t D) {
  const T bound = static_cast<T>(made::kLogScaleBound);
  for (int64_t d = 0; d < D; ++d) {
    const T g = gz ? gz[d] : T(0);
    const T dx = g * inv_sigma[d];
    T da = -(g * (centered[d] * inv_sigma[d]) + gl);  // z = centered / sigma
    if (kClip) {
      const T den = T(1) + std::fabs(raw[2 * d + 1]) / bound;
      da = da / (den * den);
    }
    if (gx) gx[d] = dx;
    graw[2 * d] = -dx;
    graw[2 * d + 1] = da;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_density_forward(const at::Tensor& x,
                                                                                  const at::Tensor& raw, bool clip) {
  check_pair(x, raw);
  const at::Tensor xc = x.contiguous(), rc = raw.contiguous();
  const int64_t B = x.size(0), D = x.size(1);
  at::Tensor z = at::empty({B, D}, x.options()), inv_sigma = at::empty({B, D}, x.options());
  at::Tensor centered = at::empty({B, D}, x.options()), logdet = at::empty({B}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_density_forward", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* rp = rc.const_data_ptr<scalar_t>();
    scalar_t *zp = z.mutable_data_ptr<scalar_t>(), *ep = inv_sigma.mutable_data_ptr<scalar_t>();
    scalar_t* cp = centered.mutable_data_ptr<scalar_t>();
    // -s into inv_sigma; log|det| = sum(-s) and exp by ATen's vectorised kernels (a scalar
    // exp per element would cost more than the rest together); then z.
    at::parallel_for(0, B, row_grain(D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (clip) {
          row_neg_log_sigma<true>(rp + b * 2 * D, ep + b * D, D);
        } else {
          row_neg_log_sigma<false>(rp + b * 2 * D, ep + b * D, D);
        }
      }
    });
    at::sum_out(logdet, inv_sigma, 1);
    at::exp_(inv_sigma);
    at::parallel_for(0, B, row_grain(D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) row_z(xp + b * D, rp + b * 2 * D, ep + b * D, cp + b * D, zp + b * D, D);
    });
  });
  return {z, logdet, inv_sigma, centered};
}

// grad_z [B, D] / grad_logdet [B] (either may be undefined: zero), centered = x - mu ->
// (grad_x [B, D] or undefined, grad_raw [B, 2D]).
std::tuple<at::Tensor, at::Tensor> affine_density_backward(const std::optional<at::Tensor>& grad_z,
                                                           const std::optional<at::Tensor>& grad_logdet,
                                                           const at::Tensor& raw, const at::Tensor& inv_sigma,
                                                           const at::Tensor& centered, bool clip, bool need_dx) {
  check_pair(centered, raw);
  check_same_dtype(inv_sigma, "inv_sigma", centered, "centered");
  TORCH_CHECK_VALUE(inv_sigma.sizes() == centered.sizes(), "inv_sigma must have centered's shape");
  TORCH_CHECK_VALUE(inv_sigma.device() == centered.device(), "inv_sigma must be on centered's device");
  const int64_t B = centered.size(0), D = centered.size(1);
  const bool has_gz = grad_z.has_value() && grad_z->defined();
  const bool has_gl = grad_logdet.has_value() && grad_logdet->defined();
  if (has_gz) {
    TORCH_CHECK_VALUE(grad_z->sizes() == centered.sizes() && grad_z->device().is_cpu(),
                      "grad_z must have z's shape");
  }
  if (has_gl) TORCH_CHECK_VALUE(grad_logdet->dim() == 1 && grad_logdet->size(0) == B, "grad_logdet must be [B]");
  const auto dtype = centered.scalar_type();
  const at::Tensor gz = has_gz ? grad_z->to(dtype).contiguous() : at::Tensor();
  const at::Tensor gl = has_gl ? grad_logdet->to(dtype).contiguous() : at::Tensor();
  const at::Tensor rc = raw.contiguous(), ec = inv_sigma.contiguous(), cc = centered.contiguous();
  at::Tensor grad_raw = at::empty({B, 2 * D}, centered.options());
  at::Tensor grad_x = need_dx ? at::empty({B, D}, centered.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "affine_density_backward", [&] {
    const scalar_t* gzp = has_gz ? gz.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* glp = has_gl ? gl.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t *rp = rc.const_data_ptr<scalar_t>(), *ep = ec.const_data_ptr<scalar_t>();
    const scalar_t* cp = cc.const_data_ptr<scalar_t>();
    scalar_t* grp = grad_raw.mutable_data_ptr<scalar_t>();
    scalar_t* gxp = need_dx ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, row_grain(D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* g = gzp ? gzp + b * D : nullptr;
        const scalar_t g_l = glp ? glp[b] : scalar_t(0);
        scalar_t* dx = gxp ? gxp + b * D : nullptr;
        (clip ? row_backward<true, scalar_t> : row_backward<false, scalar_t>)(
            g, g_l, rp + b * 2 * D, ep + b * D, cp + b * D, dx, grp + b * 2 * D, D);
      }
    });
  });
  return {grad_x, grad_raw};
}

}  // namespace af
