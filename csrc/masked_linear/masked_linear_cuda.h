// Torch-free launchers of the CUDA masked linear kernels (masked_linear_cuda.cu),
// bound to torch tensors by masked_linear_torch_cuda.cpp. All pointers are device
// pointers to contiguous row-major arrays of the compute type (float or double)
// in degree-sorted unit order (docs/DESIGN.md section 4): x_s [B, I], W_s [O, I]
// (unmasked: the kernels compute the mask per tile from the sorted degrees),
// y_s / g [B, O]; in_sorted [I], out_sorted [O] ascending int64 degrees.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace af {
namespace cuda {

struct MaskedLinearLaunch {
  bool is_double;  // compute type: double if true, else float
  int64_t B, O, I;
  const int64_t* in_sorted;
  const int64_t* out_sorted;
  bool strict;     // M = 1{out > in} if true, else 1{out >= in}
  int64_t act;     // af::ml::Activation
  cudaStream_t stream;
};

// y_s = act(x_s @ (W_s * M).T + bias_s); bias_s [O] or nullptr.
cudaError_t masked_linear_forward(const MaskedLinearLaunch& p, const void* x_s, const void* w_s,
                                  const void* bias_s, void* y_s);
// g = grad_y_s * act'(pre) from y_s (y_s unused, may be nullptr, for act none; g may
// then alias grad_y_s), and db_s [O] = sum over rows of g (db_s may be nullptr).
cudaError_t masked_linear_grad_pre(const MaskedLinearLaunch& p, const void* grad_y_s, const void* y_s, void* g,
                                   void* db_s);
// dx_s [B, I] = g @ (W_s * M).
cudaError_t masked_linear_grad_input(const MaskedLinearLaunch& p, const void* g, const void* w_s, void* dx_s);
// dW_s [O, I] = (g.T @ x_s) * M (every entry written, the masked ones with 0).
cudaError_t masked_linear_grad_weight(const MaskedLinearLaunch& p, const void* g, const void* x_s, void* dw_s);

}  // namespace cuda
}  // namespace af
