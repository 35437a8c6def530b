// Torch binding of the one-launch CUDA MADE sampler (made_cuda.cu): the operand
// checks of made_glue.h (shared with the CPU sampler), scratch allocation, the
// current stream and device guard. Operands are float32 or float64 (the op layer
// converts fp16/bf16 models' operands to fp32).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>
#include <vector>

#include "common/ops.h"
#include "made/made_cuda.h"
#include "made/made_glue.h"

namespace af {

std::tuple<at::Tensor, at::Tensor> made_cuda_sample(const std::vector<at::Tensor>& weights,
                                                    const std::vector<at::Tensor>& biases,
                                                    const std::vector<at::Tensor>& degrees,
                                                    const std::optional<at::Tensor>& direct, const at::Tensor& order,
                                                    const std::optional<at::Tensor>& ctx_hidden,
                                                    const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise,
                                                    int64_t head, int64_t K, int64_t activation,
                                                    const std::vector<int64_t>& program) {
  check_float_tensor(noise, "noise");
  TORCH_CHECK_VALUE(noise.is_cuda(), "noise must be a CUDA tensor, got ", noise.device());
  const c10::cuda::CUDAGuard guard(noise.device());
  const made::Checked checked = made::check_operands(weights, biases, degrees, direct, order, ctx_hidden, ctx_out,
                                                     noise, head, K, activation, program, noise.device());
  const made::Operands& op = checked.op;
  const auto dtype = noise.scalar_type();
  int device = 0, max_shared = 0;
  TORCH_CHECK(cudaGetDevice(&device) == cudaSuccess &&
                  cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) ==
                      cudaSuccess,
              "made_sample: cannot query the CUDA device");
  const int64_t smem = cuda::made_sample_shared_bytes(op, dtype == at::kDouble);
  TORCH_CHECK_VALUE(smem <= max_shared, "made_sample (cuda): ", op.P, " outputs per dimension need ", smem,
                    " bytes of shared memory per block, the device has ", max_shared,
                    "; use backend='triton' or 'cpp'");
  const bool categorical = head == made::kCategorical;
  at::Tensor x = at::empty({op.n, op.D}, noise.options().dtype(categorical ? at::kLong : dtype));
  at::Tensor lp = at::empty({op.n}, noise.options());
  at::Tensor scratch = at::empty({cuda::made_sample_scratch_elements(op)}, noise.options());
  const cuda::MadeSampleLaunch launch{dtype == at::kDouble, op, scratch.mutable_data_ptr(), x.mutable_data_ptr(),
                                      lp.mutable_data_ptr(), at::cuda::getCurrentCUDAStream().stream()};
  const cudaError_t e = cuda::made_sample(launch);
  TORCH_CHECK(e == cudaSuccess, "CUDA made_sample kernel failed: ", cudaGetErrorString(e));
  return {x, lp};
}

}  // namespace af
