// Torch binding of the CUDA NADE kernels (nade_cuda.cu): checks, layouts,
// scratch allocation, the current stream. fp16/bf16 inputs are computed in
// fp32 (outputs fp32; gradients returned in the parameters' dtype).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/ops.h"
#include "nade/nade_cuda.h"
#include "nade/nade_row_glue.h"

namespace af {
namespace {

constexpr int64_t kLanes = 32;  // nade_cuda.cu runs one warp per row

at::ScalarType compute_type(const at::Tensor& W) {
  return W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor prep(const at::Tensor& t, const char* name, const at::Tensor& W, at::ScalarType ct) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.device() == W.device(), name, " is on ", t.device(), " but W is on ", W.device());
  return t.scalar_type() == at::kLong ? t.contiguous() : t.to(ct).contiguous();
}

struct Prepared {
  at::Tensor WT, c, V, b, order, bad_col, scratch;
  nade_glue::Shapes s;
  cuda::NadeLaunch launch;
};

Prepared prepare(int64_t kind, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                 const at::Tensor& order, int64_t B) {
  const auto ct = compute_type(W);
  Prepared p;
  p.c = prep(c, "c", W, ct);
  p.V = prep(V, "V", W, ct);
  p.b = prep(b, "b", W, ct);
  const at::Tensor Wc = prep(W, "W", W, ct);
  p.s = nade_glue::check(kind, Wc, p.c, p.V, p.b, order);
  p.WT = nade_glue::to_WT(Wc, p.s);
  p.bad_col = nade_glue::bad_columns(p.WT);
  p.order = order.to(W.device()).contiguous();
  p.scratch = at::empty({3 * B * p.s.H + B * kLanes * p.s.P}, Wc.options());
  p.launch = {static_cast<int>(kind), ct == at::kDouble, p.WT.data_ptr(), p.c.data_ptr(), p.V.data_ptr(),
              p.b.data_ptr(), p.order.data_ptr<int64_t>(), p.bad_col.data_ptr<uint8_t>(), B, p.s.D, p.s.H, p.s.K,
              p.scratch.data_ptr(),
              at::cuda::getCurrentCUDAStream().stream()};
  return p;
}

void check_launch(cudaError_t e) { TORCH_CHECK(e == cudaSuccess, "CUDA NADE kernel failed: ", cudaGetErrorString(e)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> nade_cuda_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                     const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                                                     const at::Tensor& order) {
  const c10::cuda::CUDAGuard guard(W.device());
  auto p = prepare(kind, W, c, V, b, order, x.size(0));
  const at::Tensor xc = prep(x, "x", W, compute_type(W));
  nade_glue::check_x(xc, p.s, p.WT);
  auto lp = at::empty({x.size(0)}, p.WT.options());
  auto l = at::empty(nade_glue::out_shape(x.size(0), p.s), p.WT.options());
  check_launch(cuda::nade_forward(p.launch, xc.data_ptr(), lp.data_ptr(), l.data_ptr()));
  return {lp, l};
}

std::tuple<at::Tensor, at::Tensor> nade_cuda_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                                    const at::Tensor& V, const at::Tensor& b,
                                                    const at::Tensor& order, const at::Tensor& u) {
  const c10::cuda::CUDAGuard guard(W.device());
  auto p = prepare(kind, W, c, V, b, order, u.size(0));
  const at::Tensor uc = prep(u, "u", W, compute_type(W));
  nade_glue::check_u(uc, p.s, p.WT);
  auto x = at::empty({u.size(0), p.s.D}, p.s.int_x ? p.WT.options().dtype(at::kLong) : p.WT.options());
  auto lp = at::empty({u.size(0)}, p.WT.options());
  check_launch(cuda::nade_sample(p.launch, uc.data_ptr(), x.data_ptr(), lp.data_ptr()));
  return {x, lp};
}

std::vector<at::Tensor> nade_cuda_backward(int64_t kind, const at::Tensor& grad,
                                           const std::optional<at::Tensor>& grad_outputs, const at::Tensor& x,
                                           const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                           const at::Tensor& b, const at::Tensor& order, const at::Tensor& l) {
  const c10::cuda::CUDAGuard guard(W.device());
  const auto ct = compute_type(W);
  auto p = prepare(kind, W, c, V, b, order, x.size(0));
  const at::Tensor xc = prep(x, "x", W, ct), gc = prep(grad, "grad", W, ct), lc = prep(l, "outputs", W, ct);
  nade_glue::check_x(xc, p.s, p.WT);
  TORCH_CHECK_VALUE(gc.numel() == x.size(0), "grad must have shape [B]");
  TORCH_CHECK_VALUE(lc.numel() == x.size(0) * p.s.D * p.s.P, "outputs must hold the forward outputs [B, D, P]");
  at::Tensor go;
  if (grad_outputs.has_value() && grad_outputs->defined()) {
    go = prep(*grad_outputs, "grad_outputs", W, ct);
    TORCH_CHECK_VALUE(go.numel() == lc.numel(), "grad_outputs must have the outputs' shape [B, D, P], got ",
                      go.sizes());
  }
  auto dWT = at::zeros_like(p.WT), dc = at::zeros_like(p.c), dV = at::zeros_like(p.V), db = at::zeros_like(p.b);
  auto dx = p.s.real_x ? at::zeros({x.size(0), p.s.D}, p.WT.options()) : at::Tensor();
  check_launch(cuda::nade_backward(p.launch, xc.data_ptr(), lc.data_ptr(), gc.data_ptr(),
                                   go.defined() ? go.data_ptr() : nullptr, dWT.data_ptr(),
                                   dc.data_ptr(), dV.data_ptr(), db.data_ptr(), p.s.real_x ? dx.data_ptr() : nullptr));
  const auto pt = W.scalar_type();
  return {nade_glue::from_WT(dWT, p.s).to(pt), dc.to(pt), dV.to(pt), db.to(pt),
          p.s.real_x ? dx.to(x.scalar_type()) : dx};
}

}  // namespace af
