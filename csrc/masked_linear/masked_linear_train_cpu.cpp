// The training path's one-call entries (docs/DESIGN.md sections 4 and 9): on degree-sorted
// fp32 layers where the AVX-512 kernels run, the general path's NaN/inf checks (the forward:
// x and W; the backward: grad_y and the bias), then the products, in one extension call per
// layer and direction (a training step otherwise spends about as long in a chain of Python
// checks as a small layer's products take). A check that finds NaN/inf returns ok = false
// having computed nothing; the caller then takes the general path, which gives the
// reference's NaNs and gradients (section 9).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/ops.h"
#include "masked_linear/masked_linear_avx512.h"
#include "masked_linear/masked_linear_threads.h"

namespace af {
namespace {

void check_layer(const at::Tensor& x, const at::Tensor& w, const at::Tensor& row_reach) {
  check_float_tensor(x, "x", 2);
  check_float_tensor(w, "weight", 2);
  check_same_dtype(x, "x", w, "weight");
  TORCH_CHECK_VALUE(x.size(1) == w.size(1), "x must have shape [B, ", w.size(1), "], got ", x.sizes());
  TORCH_CHECK_VALUE(w.stride(1) == 1 && w.stride(0) >= w.size(1), "weight must have unit column stride");
  TORCH_CHECK(ml_avx512::runs(true, x, row_reach, w.size(0)),  // (which checks row_reach)
              "masked_linear_train_*: fp32 layers on a CPU where the AVX-512 kernels run only");
}

}  // namespace

std::tuple<at::Tensor, bool> masked_linear_train_forward(const at::Tensor& x, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias,
                                                         const at::Tensor& row_reach, int64_t activation) {
  const at::NoGradGuard no_grad;
  check_layer(x, weight, row_reach);
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 3, "activation must be 0..3, got ", activation);
  if (masked_linear_any_nonfinite(x) || masked_linear_any_nonfinite(weight)) {
    return {at::Tensor(), false};
  }
  at::Tensor y = ml_avx512::forward(x, weight, bias, row_reach, ml_threads::python_dispatch({&x, &weight}));
  activate_(y, activation);
  return {y, true};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> masked_linear_train_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& row_reach, int64_t activation, bool need_dx,
    bool need_dw, bool need_db, bool check_inputs) {
  const at::NoGradGuard no_grad;
  check_layer(x, weight, row_reach);
  const int64_t B = x.size(0), O = weight.size(0);
  check_float_tensor(grad_y, "grad_y", 2);
  TORCH_CHECK_VALUE(grad_y.size(0) == B && grad_y.size(1) == O, "grad_y must have shape [", B, ", ", O, "]");
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 3, "activation must be 0..3, got ", activation);
  TORCH_CHECK_VALUE(activation == 0 || (y.has_value() && y->defined()),
                    "y (the forward output) is required for an activation");
  if (activation != 0) {
    check_same_dtype(*y, "y", x, "x");
    TORCH_CHECK_VALUE(y->dim() == 2 && y->size(0) == B && y->size(1) == O, "y must have shape [", B, ", ", O, "]");
  }
  // As the general path (section 9): grad_y and the bias, and x and W unless the forward found
  // them finite.
  const bool has_bias = bias.has_value() && bias->defined();
  if (masked_linear_any_nonfinite(grad_y) || (has_bias && masked_linear_any_nonfinite(*bias)) ||
      (check_inputs && (masked_linear_any_nonfinite(x) || masked_linear_any_nonfinite(weight)))) {
    return {at::Tensor(), at::Tensor(), at::Tensor(), false};
  }
  const at::Tensor gy = grad_y.contiguous().to(x.scalar_type());
  const at::Tensor gpre = activation_backward(gy, activation == 0 ? at::Tensor() : y->contiguous(), activation)
                              .contiguous();  // d loss / d pre-activation
  at::Tensor dx, dw, db;
  if (need_db) db = gpre.sum(0);
  if (need_dx || need_dw) {
    const bool serial = ml_threads::python_dispatch({&x, &grad_y, &weight});
    std::tie(dx, dw) = ml_avx512::backward(gpre, x.contiguous(), weight, row_reach, need_dx, need_dw, serial);
  }
  return {dx, dw, db, true};
}

}  // namespace af
