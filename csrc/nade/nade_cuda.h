// Torch-free launchers of the CUDA NADE kernels (nade_cuda.cu), bound to torch
// tensors by nade_torch_cuda.cpp; `kind` as nade_kinds.h. Pointers are device pointers to contiguous arrays
// in the layouts of nade_row.h; `x` is float/double for binary and RNADE and
// int64 for categorical; scratch is 3*B*H + B*32*P elements of the compute type.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace af {
namespace cuda {

struct NadeLaunch {
  int kind;         // nade_kinds.h
  bool is_double;   // compute type: double if true, else float
  const void* WT;   // [D, Kin, H]
  const void* c;    // [H]
  const void* V;    // [D, P, H]
  const void* b;    // [D, P]
  const int64_t* order;
  const uint8_t* bad_col;  // [D, Kin] nade_row.h
  int64_t B, D, H, K;
  void* scratch;    // see above
  cudaStream_t stream;
};

// log_prob [B]; l [B, D, P] (the per-dimension outputs).
cudaError_t nade_forward(const NadeLaunch& p, const void* x, void* log_prob, void* l);
// Draws x [B, D] from u [B, D, kU]; log_prob [B].
cudaError_t nade_sample(const NadeLaunch& p, const void* u, void* x, void* log_prob);
// Accumulates the gradient of sum_b grad[b] log p(x_b) + sum(grad_outputs * l) into dWT,
// dc, dV, db (zeroed by the caller) and, for RNADE, dx [B, D] (or nullptr);
// grad_outputs [B, D, P] or nullptr.
cudaError_t nade_backward(const NadeLaunch& p, const void* x, const void* l, const void* grad,
                          const void* grad_outputs, void* dWT, void* dc, void* dV, void* db, void* dx);

}  // namespace cuda
}  // namespace af
