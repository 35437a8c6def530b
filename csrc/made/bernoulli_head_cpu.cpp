// The Bernoulli head of MADE and FVSBN on the CPU (docs/DESIGN.md section 7): log p(x) [B] =
// sum_d x*l - softplus(l) from the logits [B, D], and its backward dl = g x - g softplus'(l),
// each one vectorised pass over [B, D] (the reference's composition is five tensor ops and as
// many autograd nodes). armodel_fast/ops/made/bernoulli_head.py wraps them in one node.
// The vector math (exp, log1p, sigmoid) is the NADE kernels' (nade/nade_simd.inc), compiled
// per ISA in the same way.
#include "common/ops.h"
#include "nade/nade_cpu_common.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector arguments in the baseline copy (all inlined)

#define AF_NADE_LOOPS "made/bernoulli_head.inc"
#include "nade/nade_isa_copies.inc"

namespace af {
namespace {

// Rows per task: about 16K elements (a small model's head runs on one thread).
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

void check_pair(const at::Tensor& logits, const at::Tensor& x) {
  check_float_tensor(logits, "logits", 2);
  check_float_tensor(x, "x", 2);
  check_same_dtype(x, "x", logits, "logits");
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
                   "bernoulli_log_prob: logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(x.sizes() == logits.sizes(), "x must have the logits' shape ", logits.sizes(), ", got ",
                    x.sizes());
  TORCH_CHECK_VALUE(logits.device().is_cpu() && x.device().is_cpu(),
                    "bernoulli_log_prob: logits and x must be CPU tensors");
}

}  // namespace

at::Tensor bernoulli_log_prob_forward(const at::Tensor& logits, const at::Tensor& x) {
  check_pair(logits, x);
  const at::Tensor l = logits.contiguous(), xc = x.contiguous();
  const int64_t B = l.size(0), D = l.size(1);
  at::Tensor lp = at::empty({B}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "bernoulli_log_prob_forward", [&] {
    const scalar_t* lptr = l.const_data_ptr<scalar_t>();
    const scalar_t* xptr = xc.const_data_ptr<scalar_t>();
    scalar_t* out = lp.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(D), [&](int64_t r0, int64_t r1) {
      AF_NADE_WITH_ISA(BernoulliHead, [&](auto k) { decltype(k)::forward(lptr, xptr, out, D, r0, r1); });
    });
  });
  return lp;
}

at::Tensor bernoulli_log_prob_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& x) {
  check_pair(logits, x);
  check_float_tensor(grad, "grad", 1);
  check_same_dtype(grad, "grad", logits, "logits");
  TORCH_CHECK_VALUE(grad.size(0) == logits.size(0), "grad must have shape [", logits.size(0), "], got ",
                    grad.sizes());
  const at::Tensor l = logits.contiguous(), xc = x.contiguous(), g = grad.contiguous();
  const int64_t B = l.size(0), D = l.size(1);
  at::Tensor dl = at::empty({B, D}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "bernoulli_log_prob_backward", [&] {
    const scalar_t* lptr = l.const_data_ptr<scalar_t>();
    const scalar_t* xptr = xc.const_data_ptr<scalar_t>();
    const scalar_t* gptr = g.const_data_ptr<scalar_t>();
    scalar_t* out = dl.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(D), [&](int64_t r0, int64_t r1) {
      AF_NADE_WITH_ISA(BernoulliHead, [&](auto k) { decltype(k)::backward(gptr, lptr, xptr, out, D, r0, r1); });
    });
  });
  return dl;
}

}  // namespace af
