// Torch-free launcher of the one-launch CUDA MADE / FVSBN sampler (made_cuda.cu),
// bound to torch tensors by made_torch_cuda.cpp. The operands (made_math.h's
// Operands) are device pointers of the compute type (float or double).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "made/made_math.h"

namespace af {
namespace cuda {

struct MadeSampleLaunch {
  bool is_double;       // compute type: double if true, else float
  made::Operands op;
  void* scratch;        // made_sample_scratch_elements(op) elements of the compute type
  void* x;              // [n, D] of the compute type, or int64 for a categorical head
  void* log_prob;       // [n]
  cudaStream_t stream;
};

// Scratch the launcher needs: one [inputs + hidden units][samples] block per CUDA block.
int64_t made_sample_scratch_elements(const made::Operands& op);
// Dynamic shared memory of one block (grows with the P outputs per dimension).
int64_t made_sample_shared_bytes(const made::Operands& op, bool is_double);
// Draws all D dimensions of every sample in one kernel launch.
cudaError_t made_sample(const MadeSampleLaunch& p);

}  // namespace cuda
}  // namespace af
