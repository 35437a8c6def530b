// Torch side of the one-pass MADE sampler, shared by the C++ CPU binding
// (made_cpu.cpp) and the CUDA one (made_torch_cuda.cpp): every operand is
// checked (a ValueError / TypeError naming it) before a kernel runs, and
// z = Phi^-1(clamped u[..., 1]) of the mixture head is computed exactly as
// reference/heads.py does.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "made/made_math.h"

namespace af {
namespace made {

struct Checked {
  Operands op;
  at::Tensor order, noise, z;  // contiguous copies the pointers in op refer to
};

inline void check_matrix(const at::Tensor& t, const char* name, at::ScalarType dtype, at::Device device,
                         int64_t rows, int64_t cols) {
  check_float_tensor(t, name, 2);
  check_contiguous(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK_VALUE((rows < 0 || t.size(0) == rows) && (cols < 0 || t.size(1) == cols), name, " must have shape [",
                    rows, ", ", cols, "], got ", t.sizes());
}

// Checks the operands of made_sample (see common/ops.h) on `device` and points an Operands at them.
inline Checked check_operands(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                              const std::vector<at::Tensor>& degrees, const std::optional<at::Tensor>& direct,
                              const at::Tensor& order, const std::optional<at::Tensor>& ctx_hidden,
                              const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise, int64_t head,
                              int64_t K, int64_t activation, const std::vector<int64_t>& program,
                              at::Device device) {
  TORCH_CHECK_VALUE(!weights.empty(), "weights must hold the output layer at least");
  const int64_t L = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK_VALUE(L < kMaxLayers, "at most ", kMaxLayers - 1, " hidden layers, got ", L);
  TORCH_CHECK_VALUE(static_cast<int64_t>(biases.size()) == L + 1, "biases must have one entry per layer");
  TORCH_CHECK_VALUE(static_cast<int64_t>(degrees.size()) == L, "degrees must have one entry per hidden layer");
  TORCH_CHECK_VALUE(head >= kBernoulli && head <= kAffineRaw, "head must be 0..4, got ", head);
  TORCH_CHECK_VALUE(activation >= ml::kNone && activation <= ml::kTanh, "activation must be 0..3, got ", activation);
  check_float_tensor(noise, "noise");
  const auto dtype = noise.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "noise must be float32 or float64, got ", dtype);
  TORCH_CHECK_VALUE(noise.device() == device, "noise must be on ", device, ", got ", noise.device());
  TORCH_CHECK_VALUE(noise.dim() == (head == kGaussian ? 3 : 2) && (head != kGaussian || noise.size(2) == 2),
                    "noise must have shape [n, D]", head == kGaussian ? "[, 2]" : "", ", got ", noise.sizes());
  const int64_t n = noise.size(0), D = noise.size(1);
  check_order(order, D, "order", device);
  TORCH_CHECK_VALUE(head != kCategorical || K >= 2, "K must be >= 2 for a categorical head");
  TORCH_CHECK_VALUE(head == kCategorical || head == kBernoulli || K >= 1, "K must be >= 1");

  Checked c{};
  Operands& op = c.op;
  op.n = n, op.D = D, op.L = L, op.head = head, op.activation = activation;
  op.K = head == kBernoulli || is_affine(head) ? 1 : K;
  op.P = params_per_dim(head, op.K);
  op.Kin = inputs_per_dim(head, op.K);
  int64_t in_units = D * op.Kin;
  for (int64_t l = 0; l <= L; ++l) {
    const int64_t rows = l < L ? degrees[l].numel() : D * op.P;
    check_matrix(weights[l], "weights[l]", dtype, device, rows, in_units);
    check_float_tensor(biases[l], "biases[l]", 1);
    check_contiguous(biases[l], "biases[l]");
    TORCH_CHECK_VALUE(biases[l].numel() == rows && biases[l].scalar_type() == dtype && biases[l].device() == device,
                      "biases[l] must be a [", rows, "] tensor of the weights' dtype and device");
    if (l < L) {
      TORCH_CHECK_TYPE(degrees[l].scalar_type() == at::kLong, "degrees[l] must be int64");
      check_contiguous(degrees[l], "degrees[l]");
      TORCH_CHECK_VALUE(degrees[l].device() == device, "degrees[l] must be on ", device);
      op.deg[l] = degrees[l].const_data_ptr<int64_t>();
    }
    op.w[l] = weights[l].const_data_ptr();
    op.b[l] = biases[l].const_data_ptr();
    op.ldw[l] = weights[l].stride(0);
    op.units[l] = rows;
    in_units = rows;
  }
  // The hidden layers' program (empty: each act(W h + b)); the op layer has checked that a
  // skip's degrees match, this checks what the kernels index by.
  TORCH_CHECK_VALUE(program.empty() || static_cast<int64_t>(program.size()) == L,
                    "program must have one entry per hidden layer (", L, "), got ", program.size());
  for (int64_t l = 0; l < L; ++l) {
    const int64_t f = program.empty() ? kActOut : program[l];
    TORCH_CHECK_VALUE(f >= 0 && f <= (kActOut | kActIn | kSkip), "program[", l, "] must be a flag set 0..7, got ", f);
    TORCH_CHECK_VALUE(!(f & kActIn) || l >= 1, "program[0] cannot read an activated layer (ACT_IN)");
    TORCH_CHECK_VALUE(!(f & kSkip) || (l >= 2 && op.units[l] == op.units[l - 2]),
                      "program[", l, "] has SKIP: layer ", l, " must have as many units as layer ", l - 2);
    op.flags[l] = f;
  }
  if (direct.has_value() && direct->defined()) {
    check_matrix(*direct, "direct", dtype, device, D * op.P, D * op.Kin);
    op.direct = direct->const_data_ptr();
    op.ld_direct = direct->stride(0);
  }
  if (ctx_hidden.has_value() && ctx_hidden->defined()) {
    TORCH_CHECK_VALUE(L > 0, "ctx_hidden needs a hidden layer");
    check_matrix(*ctx_hidden, "ctx_hidden", dtype, device, n, op.units[0]);
    op.ctx_h = ctx_hidden->const_data_ptr();
  }
  if (ctx_out.has_value() && ctx_out->defined()) {
    check_matrix(*ctx_out, "ctx_out", dtype, device, n, D * op.P);
    op.ctx_o = ctx_out->const_data_ptr();
  }
  c.order = order.to(device).contiguous();
  op.order = c.order.const_data_ptr<int64_t>();
  c.noise = noise.contiguous();
  op.noise = c.noise.const_data_ptr();
  if (head == kGaussian) {  // z = Phi^-1(u[..., 1]) exactly as the reference computes it
    c.z = at::special_ndtri(c.noise.select(2, 1).clamp(1e-6, 1 - 1e-6)).contiguous();
    op.z = c.z.const_data_ptr();
  }
  return c;
}

}  // namespace made
}  // namespace af
