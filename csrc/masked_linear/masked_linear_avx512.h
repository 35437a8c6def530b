// The training path's three products on degree-sorted fp32 layers with AVX-512
// register tiles (masked_linear_avx512_cpu.cpp), used by masked_linear_cpu.cpp's
// in-place path when the CPU has AVX-512 (docs/DESIGN.md section 4).
//
// Row i of W reaches the inputs [0, reach[i]) and reach is non-decreasing (both
// degree vectors already sorted), so every product walks the staircase itself in
// tiles of a few rows by 16-float vectors: no per-block BLAS calls, no masked copies
// of W, and the ragged edge of each tile is masked in registers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace af {
namespace ml_avx512 {

// Whether these kernels run here: the CPU has AVX-512 (F, VL, DQ, BW) and
// ARMODEL_FAST_ISA does not lower the choice (as for the NADE kernels).
bool usable();

// Whether masked_linear_cpu.cpp's call runs them: the in-place path (identity permutations),
// fp32 and usable(); checks row_reach [O] (int64, contiguous, non-decreasing within [0, I]).
bool runs(bool in_place, const at::Tensor& x, const at::Tensor& row_reach, int64_t O);

// Where the caller's degrees are not in order (a random order's input or output layer): sorted
// column k is the caller's input in[k], sorted row i its unit out[i] (the stable degree sorts,
// launchers.plan); nullptr is the identity. The kernels read W, x and g through these where
// they pack them and write y, dx and dW to the caller's positions: the staircase is walked in
// sorted order, and no sorted copy of W is made (docs/DESIGN.md section 4).
struct Order {
  const int32_t* in = nullptr;
  const int32_t* out = nullptr;
  const int32_t* in_inverse = nullptr;  // with in: the caller's input c is sorted column in_inverse[c]
  int64_t unit(int64_t i) const { return out != nullptr ? out[i] : i; }
};

// Tensor-level entry points (masked_linear_train_cpu.cpp): y [B, O] = x @ (W * M).T + bias (no
// activation); (dx, dw) from the pre-activation gradient gs [B, O] (contiguous), each undefined
// where not needed.
at::Tensor forward(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                   const at::Tensor& row_reach, bool serial, Order order = {});
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& gs, const at::Tensor& x, const at::Tensor& w,
                                            const at::Tensor& row_reach, bool need_dx, bool need_dw, bool serial,
                                            Order order = {});

// y [B, O] (row stride O) = x @ (W * M).T + bias (bias [O] or nullptr), no activation.
// x [B, I] rows ldx, W [O, I] rows ldw (unit column stride), reach [O] (sorted rows).
// serial: all on the calling thread.
void forward(const float* x, int64_t ldx, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I,
             const int64_t* reach, const float* bias, float* y, bool serial, Order order = {});

// dx [B, I] (rows I) = g @ (W * M); g [B, O] rows O (the gradient of the pre-activation).
void grad_input(const float* g, int64_t B, const float* W, int64_t ldw, int64_t O, int64_t I,
                const int64_t* reach, float* dx, bool serial, Order order = {});

// dw [O, I] (rows I) = (g.T @ x) * M, exactly zero outside the staircase.
void grad_weight(const float* g, const float* x, int64_t ldx, int64_t B, int64_t O, int64_t I,
                 const int64_t* reach, float* dw, bool serial, Order order = {});

}  // namespace ml_avx512

// The activations in place and their backward from the output (masked_linear_cpu.cpp; ATen's
// kernels, as the reference's F.relu / F.elu / torch.tanh): act 0 none, 1 relu, 2 elu, 3 tanh.
void activate_(at::Tensor& t, int64_t act);
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, int64_t act);

}  // namespace af
