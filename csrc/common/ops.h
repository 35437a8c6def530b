// Declarations of every native function of armodel-fast, for both modules: the C++ CPU
// module armodel_fast._C (common/bindings.cpp) and the CUDA module armodel_fast._C_cuda
// (common/bindings_cuda.cpp). Each op lives in csrc/<op>/ (nade/, masked_linear/, made/):
// define its launcher in namespace af, declare it here, and add one m.def(...) line to
// the binding of its module. Keep this header light: no <torch/extension.h>, no pybind11.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace af {

// ---- NADE family (nade/; kinds in nade/nade_kinds.h, heads in nade/nade_heads.h) ----
// The same three entry points on both modules; kind: 0 binary, 1 categorical, 2 RNADE.
// Layouts as the reference: W [H, D] or [H, D, K], c [H], V [D, *tail, H], b [D, *tail],
// outputs [B, D, *tail] with tail [] / [K] / [3, K]; x [B, D] (int64 for categorical);
// u [n, D] (or [n, D, 2] for RNADE); order an int64 permutation [D].

// (log_prob [B], outputs [B, D, *tail]).
std::tuple<at::Tensor, at::Tensor> nade_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                                                const at::Tensor& order);
// [dW, dc, dV, db, dx or undefined (None)] of sum(grad * log_prob) + sum(grad_outputs * outputs);
// dx only for a continuous x (RNADE).
std::vector<at::Tensor> nade_backward(int64_t kind, const at::Tensor& grad,
                                      const std::optional<at::Tensor>& grad_outputs, const at::Tensor& x,
                                      const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                      const at::Tensor& b, const at::Tensor& order, const at::Tensor& outputs);
// (x [n, D], log_prob [n]) from uniforms u.
std::tuple<at::Tensor, at::Tensor> nade_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                               const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
                                               const at::Tensor& u);
// CPU only: the SIMD variant the NADE kernels run with ("avx512", "avx2" or "base").
const char* nade_cpu_isa();
// CPU only, for tests: the CUDA kernels' row math (nade/nade_row.h), one lane per row.
std::tuple<at::Tensor, at::Tensor> nade_rowref_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                       const at::Tensor& c, const at::Tensor& V,
                                                       const at::Tensor& b, const at::Tensor& order);
std::tuple<at::Tensor, at::Tensor> nade_rowref_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                                      const at::Tensor& V, const at::Tensor& b,
                                                      const at::Tensor& order, const at::Tensor& u);
std::vector<at::Tensor> nade_rowref_backward(int64_t kind, const at::Tensor& grad, const at::Tensor& x,
                                             const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                             const at::Tensor& b, const at::Tensor& order, const at::Tensor& l,
                                             const std::optional<at::Tensor>& grad_outputs);
// CUDA (nade/nade_torch_cuda.cpp): bound as nade_forward / nade_backward / nade_sample of _C_cuda.
std::tuple<at::Tensor, at::Tensor> nade_cuda_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                     const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                                                     const at::Tensor& order);
std::vector<at::Tensor> nade_cuda_backward(int64_t kind, const at::Tensor& grad,
                                           const std::optional<at::Tensor>& grad_outputs, const at::Tensor& x,
                                           const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                           const at::Tensor& b, const at::Tensor& order, const at::Tensor& l);
std::tuple<at::Tensor, at::Tensor> nade_cuda_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                                    const at::Tensor& V, const at::Tensor& b,
                                                    const at::Tensor& order, const at::Tensor& u);

// ---- masked linear layer (masked_linear/; docs/DESIGN.md section 4) ----
// CPU (masked_linear_cpu.cpp): staircase-blocked kernels on prepared weights.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_linear_prepare(
    const at::Tensor& weight, const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict,
    int64_t max_blocks);
at::Tensor masked_linear_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                 const at::Tensor& perm_out, const at::Tensor& row_reach,
                                 const at::Tensor& blocks, int64_t activation, bool x_sorted, bool y_sorted,
                                 const std::optional<at::Tensor>& slabs, bool in_place);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& row_reach, const at::Tensor& blocks,
    int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db,
    const std::optional<at::Tensor>& slabs, bool in_place);
// Training path on the caller's weights (identity permutations): the plan (no weights) and
// the masked slabs of one weight version.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, bool> masked_linear_plan(
    const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict, int64_t max_blocks);
at::Tensor masked_linear_slabs(const at::Tensor& weight, const at::Tensor& row_reach, const at::Tensor& blocks);
// Which kernels that path runs for fp32: "avx512" (register tiles, no slabs read) or "blas".
const char* masked_linear_train_kernels();
// Drops the grad W blocks the AVX-512 path keeps for reuse; the bytes freed (blocks nothing else held).
int64_t masked_linear_release_buffers();
// That path in one call per direction (masked_linear_train_cpu.cpp; fp32, AVX-512 kernels; perm_in /
// perm_out: the degree sorts where the degrees are not in order, row_reach then the sorted rows'):
// the NaN/inf checks first (forward: x and W; backward: grad_y and the bias, with check_inputs
// also x and W), ok = false with nothing computed where one finds NaN/inf.
std::tuple<at::Tensor, bool> masked_linear_train_forward(const at::Tensor& x, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias,
                                                         const at::Tensor& row_reach, int64_t activation,
                                                         const std::optional<at::Tensor>& perm_in,
                                                         const std::optional<at::Tensor>& perm_out);
std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> masked_linear_train_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& row_reach, int64_t activation, bool need_dx,
    bool need_dw, bool need_db, bool check_inputs, const std::optional<at::Tensor>& perm_in,
    const std::optional<at::Tensor>& perm_out);
// Exact one-pass value checks (common/value_checks_cpu.cpp): whether t holds NaN/inf, or a
// value other than 0 and 1.
bool masked_linear_any_nonfinite(const at::Tensor& t);
bool any_nonbinary(const at::Tensor& t);
// The affine MADE inverse's adjoint: the reverse sweep over the degrees (made/inverse_grad_cpu.cpp).
void made_inverse_sweep(const std::vector<at::Tensor>& weights, const std::vector<bool>& act_in,
                        const std::vector<bool>& skip, const at::Tensor& unit_bounds, const at::Tensor& reaches,
                        const std::vector<at::Tensor>& acc, const std::vector<std::optional<at::Tensor>>& acc_act,
                        const std::vector<std::optional<at::Tensor>>& in_derivs,
                        const std::vector<std::optional<at::Tensor>>& derivs, const std::vector<at::Tensor>& deltas,
                        const at::Tensor& acc_x, const at::Tensor& c_out, const at::Tensor& head,
                        const at::Tensor& gl_ds, const at::Tensor& w_out, const at::Tensor& out_reach,
                        const std::optional<at::Tensor>& w_dir, const std::optional<at::Tensor>& dir_reach, int64_t D,
                        int64_t top);
// CPU, for tests (masked_linear_tileref_cpu.cpp): the CUDA kernels' tile code
// (masked_linear_math.h, masked_linear_glue.h) run serially.
at::Tensor masked_linear_tileref_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                         const at::Tensor& perm_out, const at::Tensor& in_sorted,
                                         const at::Tensor& out_sorted, bool strict, int64_t activation,
                                         bool x_sorted, bool y_sorted);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_tileref_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted, const at::Tensor& out_sorted,
    bool strict, int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db);
// CUDA (masked_linear_torch_cuda.cpp), on degree-sorted prepared weights
// (armodel_fast.ops.masked_linear.prepare_sorted); the same arguments as the tile reference.
at::Tensor masked_linear_cuda_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                      const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                      const at::Tensor& perm_out, const at::Tensor& in_sorted,
                                      const at::Tensor& out_sorted, bool strict, int64_t activation, bool x_sorted,
                                      bool y_sorted);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_cuda_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted, const at::Tensor& out_sorted,
    bool strict, int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db);

// ---- the affine MADE's density direction (made/affine_density_cpu.cpp) ----
// (z, log|det dz/dx|, 1/sigma, x - mu) of x [B, D] and the raw outputs [B, 2D] (mu, a per
// dimension); the backward gives (grad x or undefined, grad raw). float32 / float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_density_forward(const at::Tensor& x,
                                                                                  const at::Tensor& raw, bool clip);
std::tuple<at::Tensor, at::Tensor> affine_density_backward(const std::optional<at::Tensor>& grad_z,
                                                           const std::optional<at::Tensor>& grad_logdet,
                                                           const at::Tensor& raw, const at::Tensor& inv_sigma,
                                                           const at::Tensor& centered, bool clip, bool need_dx);

// ---- the Bernoulli head of MADE / FVSBN (made/bernoulli_head_cpu.cpp) ----
// log p(x) [B] = sum_d x*l - softplus(l) of the logits [B, D]; the backward gives
// dl = grad[:, None] x - grad[:, None] softplus'(l) (as F.softplus: 1 above 20). float32 / float64, CPU.
at::Tensor bernoulli_log_prob_forward(const at::Tensor& logits, const at::Tensor& x);
at::Tensor bernoulli_log_prob_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& x);

// ---- MADE / FVSBN sampling in O(parameters) (made/) ----
// CPU (made_cpu.cpp) and CUDA (made_torch_cuda.cpp, one launch): the same operands.
std::tuple<at::Tensor, at::Tensor> made_sample(const std::vector<at::Tensor>& weights,
                                               const std::vector<at::Tensor>& biases,
                                               const std::vector<at::Tensor>& degrees,
                                               const std::optional<at::Tensor>& direct, const at::Tensor& order,
                                               const std::optional<at::Tensor>& ctx_hidden,
                                               const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise,
                                               int64_t head, int64_t K, int64_t activation,
                                               const std::vector<int64_t>& program);
std::tuple<at::Tensor, at::Tensor> made_cuda_sample(const std::vector<at::Tensor>& weights,
                                                    const std::vector<at::Tensor>& biases,
                                                    const std::vector<at::Tensor>& degrees,
                                                    const std::optional<at::Tensor>& direct, const at::Tensor& order,
                                                    const std::optional<at::Tensor>& ctx_hidden,
                                                    const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise,
                                                    int64_t head, int64_t K, int64_t activation,
                                                    const std::vector<int64_t>& program);

}  // namespace af
