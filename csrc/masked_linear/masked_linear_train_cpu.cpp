// The training path's one-call entries (docs/DESIGN.md sections 4 and 9): on degree-sorted
// fp32 layers where the AVX-512 kernels run, the general path's NaN/inf checks (the forward:
// x and W; the backward: grad_y and the bias), then the products, in one extension call per
// layer and direction (a training step otherwise spends about as long in a chain of Python
// checks as a small layer's products take). A check that finds NaN/inf returns ok = false
// having computed nothing; the caller then takes the general path, which gives the
// reference's NaNs and gradients (section 9). Also the AVX-512 kernels' tensor-level entry
// points, and grad W's kept buffers.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/ops.h"
#include "masked_linear/masked_linear_avx512.h"
#include "masked_linear/masked_linear_threads.h"

namespace af {
namespace ml_avx512 {

at::Tensor forward(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                   const at::Tensor& row_reach, bool serial, Order order) {
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
          y.mutable_data_ptr<float>(), serial, order);
  return y;
}

namespace {

// grad W's [O, I] buffer. A block that an earlier call returned and that nothing references any
// more (its gradient was dropped, e.g. by zero_grad(set_to_none=True), or added into .grad) is
// written again, under a new tensor, instead of a fresh one: a fresh multi-MB block comes back
// from the system as page faults at every training step (hundreds per step). Blocks of 1 MiB and
// more, the last kKeptBlocks, are kept.
struct KeptBlocks {
  std::mutex lock;
  std::vector<at::Tensor> blocks;  // at most kKeptBlocks, oldest first
};

KeptBlocks& kept() {
  static auto* k = new KeptBlocks();  // never destroyed: no tensor freed at exit
  return *k;
}

at::Tensor grad_weight_buffer(int64_t O, int64_t I, const at::TensorOptions& options) {
  constexpr size_t kKeptBlocks = 8;
  KeptBlocks& k = kept();
  const std::lock_guard<std::mutex> guard(k.lock);
  for (const at::Tensor& t : k.blocks) {
    if (t.size(0) == O && t.size(1) == I && t.dtype() == options.dtype() && t.storage().use_count() == 1) {
      return at::empty({0}, options).set_(t.storage(), 0, {O, I}, {I, 1});
    }
  }
  at::Tensor fresh = at::empty({O, I}, options);
  if (O * I * static_cast<int64_t>(fresh.element_size()) >= (int64_t(1) << 20)) {
    if (k.blocks.size() >= kKeptBlocks) k.blocks.erase(k.blocks.begin());
    k.blocks.push_back(at::empty({0}, options).set_(fresh.storage(), 0, {O, I}, {I, 1}));
  }
  return fresh;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& gs, const at::Tensor& x, const at::Tensor& w,
                                            const at::Tensor& row_reach, bool need_dx, bool need_dw, bool serial,
                                            Order order) {
  TORCH_CHECK(usable(), "masked_linear: the AVX-512 kernels do not run here");
  const int64_t B = x.size(0), O = w.size(0), I = w.size(1);
  const int64_t* reach = row_reach.const_data_ptr<int64_t>();
  at::Tensor dx, dw;
  if (need_dx) {
    dx = at::empty({B, I}, x.options());
    grad_input(gs.const_data_ptr<float>(), B, w.const_data_ptr<float>(), w.stride(0), O, I, reach,
               dx.mutable_data_ptr<float>(), serial, order);
  }
  if (need_dw) {
    const at::Tensor xc = x.contiguous();
    dw = grad_weight_buffer(O, I, x.options());
    grad_weight(gs.const_data_ptr<float>(), xc.const_data_ptr<float>(), I, B, O, I, reach,
                dw.mutable_data_ptr<float>(), serial, order);
  }
  return {dx, dw};
}

}  // namespace ml_avx512

int64_t masked_linear_release_buffers() {
  ml_avx512::KeptBlocks& k = ml_avx512::kept();
  const std::lock_guard<std::mutex> guard(k.lock);
  int64_t freed = 0;
  for (const at::Tensor& t : k.blocks) {
    if (t.storage().use_count() == 1) freed += static_cast<int64_t>(t.storage().nbytes());
  }
  k.blocks.clear();  // blocks still held as gradients stay theirs
  return freed;
}

namespace {

// A permutation tensor's int32 copy for ml_avx512::Order (empty: none given, the identity); checks
// it is a contiguous int64 permutation of [0, n), since the kernels index W, x and g through it.
std::vector<int32_t> order_indices(const std::optional<at::Tensor>& perm, int64_t n, const char* name) {
  std::vector<int32_t> out;
  if (!perm.has_value() || !perm->defined()) return out;
  TORCH_CHECK_VALUE(perm->scalar_type() == at::kLong && perm->dim() == 1 && perm->numel() == n &&
                        perm->is_contiguous() && perm->device().is_cpu(),
                    name, " must be a contiguous int64 CPU tensor of length ", n);
  const int64_t* p = perm->const_data_ptr<int64_t>();
  std::vector<char> seen(n, 0);
  out.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < n && !seen[p[i]], name, " must be a permutation of 0..", n - 1);
    seen[p[i]] = 1;
    out[i] = static_cast<int32_t>(p[i]);
  }
  return out;
}

struct LayerOrder {  // the int32 permutations (and perm_in's inverse) and the Order that points into them
  std::vector<int32_t> in, out, in_inverse;
  ml_avx512::Order order() const {
    return {in.empty() ? nullptr : in.data(), out.empty() ? nullptr : out.data(),
            in.empty() ? nullptr : in_inverse.data()};
  }
};

LayerOrder layer_order(const std::optional<at::Tensor>& perm_in, const std::optional<at::Tensor>& perm_out,
                       const at::Tensor& w) {
  LayerOrder order{order_indices(perm_in, w.size(1), "perm_in"), order_indices(perm_out, w.size(0), "perm_out"), {}};
  order.in_inverse.resize(order.in.size());
  for (size_t k = 0; k < order.in.size(); ++k) order.in_inverse[order.in[k]] = static_cast<int32_t>(k);
  return order;
}

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
                                                         const at::Tensor& row_reach, int64_t activation,
                                                         const std::optional<at::Tensor>& perm_in,
                                                         const std::optional<at::Tensor>& perm_out) {
  const at::NoGradGuard no_grad;
  check_layer(x, weight, row_reach);
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 3, "activation must be 0..3, got ", activation);
  const LayerOrder order = layer_order(perm_in, perm_out, weight);
  if (masked_linear_any_nonfinite(x) || masked_linear_any_nonfinite(weight)) {
    return {at::Tensor(), false};
  }
  at::Tensor y = ml_avx512::forward(x, weight, bias, row_reach, ml_threads::python_dispatch({&x, &weight}),
                                    order.order());
  activate_(y, activation);
  return {y, true};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> masked_linear_train_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& row_reach, int64_t activation, bool need_dx,
    bool need_dw, bool need_db, bool check_inputs, const std::optional<at::Tensor>& perm_in,
    const std::optional<at::Tensor>& perm_out) {
  const at::NoGradGuard no_grad;
  check_layer(x, weight, row_reach);
  const LayerOrder order = layer_order(perm_in, perm_out, weight);
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
    std::tie(dx, dw) = ml_avx512::backward(gpre, x.contiguous(), weight, row_reach, need_dx, need_dw, serial,
                                           order.order());
  }
  return {dx, dw, db, true};
}

}  // namespace af
