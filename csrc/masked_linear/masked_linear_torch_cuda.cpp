// Torch binding of the CUDA masked linear kernels (masked_linear_cuda.cu): the
// checks, gathers and scatters of masked_linear_glue.h (shared with the CPU
// tile-reference), the current stream and device guard. fp16/bf16 tensors are
// computed in fp32 and returned in their own dtype.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/ops.h"
#include "masked_linear/masked_linear_cuda.h"
#include "masked_linear/masked_linear_glue.h"

namespace af {
namespace {

void check_launch(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "CUDA masked_linear ", what, " kernel failed: ", cudaGetErrorString(e));
}

void check_cuda(const at::Tensor& w_sorted) {
  check_float_tensor(w_sorted, "w_sorted", 2);
  TORCH_CHECK_VALUE(w_sorted.is_cuda(), "w_sorted must be a CUDA tensor, got ", w_sorted.device());
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

struct CudaKernels {
  cuda::MaskedLinearLaunch launch(const ml_glue::Shape& s) const {
    return {s.is_double, s.B, s.O, s.I, s.in_sorted, s.out_sorted, s.strict, s.act,
            at::cuda::getCurrentCUDAStream().stream()};
  }
  void forward(const ml_glue::Shape& s, const at::Tensor& xs, const at::Tensor& ws, const at::Tensor& bias_s,
               at::Tensor& ys) const {
    check_launch(cuda::masked_linear_forward(launch(s), xs.const_data_ptr(), ws.const_data_ptr(),
                                             ptr_or_null(bias_s), ys.mutable_data_ptr()),
                 "forward");
  }
  void grad_pre(const ml_glue::Shape& s, const at::Tensor& gys, const at::Tensor& ys, at::Tensor& g,
                at::Tensor& db_s) const {
    check_launch(cuda::masked_linear_grad_pre(launch(s), gys.const_data_ptr(), ptr_or_null(ys),
                                              g.data_ptr() == gys.data_ptr() ? nullptr : g.mutable_data_ptr(),
                                              db_s.defined() ? db_s.mutable_data_ptr() : nullptr),
                 "activation-gradient");
  }
  void grad_input(const ml_glue::Shape& s, const at::Tensor& g, const at::Tensor& ws, at::Tensor& dxs) const {
    check_launch(cuda::masked_linear_grad_input(launch(s), g.const_data_ptr(), ws.const_data_ptr(),
                                                dxs.mutable_data_ptr()),
                 "dx");
  }
  void grad_weight(const ml_glue::Shape& s, const at::Tensor& g, const at::Tensor& xs, at::Tensor& dws) const {
    check_launch(cuda::masked_linear_grad_weight(launch(s), g.const_data_ptr(), xs.const_data_ptr(),
                                                 dws.mutable_data_ptr()),
                 "dW");
  }
};

}  // namespace

at::Tensor masked_linear_cuda_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                      const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                      const at::Tensor& perm_out, const at::Tensor& in_sorted,
                                      const at::Tensor& out_sorted, bool strict, int64_t activation, bool x_sorted,
                                      bool y_sorted) {
  check_cuda(w_sorted);
  const c10::cuda::CUDAGuard guard(w_sorted.device());
  CudaKernels k;
  return ml_glue::forward(x, w_sorted, bias, perm_in, perm_out, in_sorted, out_sorted, strict, activation, x_sorted,
                          y_sorted, /*want_cuda=*/true, k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_cuda_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted, const at::Tensor& out_sorted,
    bool strict, int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db) {
  check_cuda(w_sorted);
  const c10::cuda::CUDAGuard guard(w_sorted.device());
  CudaKernels k;
  return ml_glue::backward(grad_y, x, y, w_sorted, perm_in, perm_out, in_sorted, out_sorted, strict, activation,
                           x_sorted, y_sorted, need_dx, need_dw, need_db, /*want_cuda=*/true, k);
}

}  // namespace af
