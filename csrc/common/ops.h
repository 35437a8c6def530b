// Forward declarations of every op bound into armodel_fast._C.
//
// Each op lives in its own csrc/<op>.cpp (e.g. nade_log_prob.cpp) and defines
// its launcher in namespace af; declare it here and add one m.def(...) line to
// the "---- ops ----" section of bindings.cpp. Keep this header light: it must
// not pull in <torch/extension.h> or pybind11.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace af {

// ---- NADE (nade_cpu.cpp, nade_variants_cpu.cpp; math in nade_math.h) ----
// Binary NADE: x [B, D] 0/1, W [H, D], c [H], V [D, H], b [D], order int64 [D].
std::tuple<at::Tensor, at::Tensor> nade_forward(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                                const at::Tensor& V, const at::Tensor& b, const at::Tensor& order);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nade_backward(
    const at::Tensor& grad_log_prob, const std::optional<at::Tensor>& grad_logits, const at::Tensor& x,
    const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
    const at::Tensor& logits);
std::tuple<at::Tensor, at::Tensor> nade_sample(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                               const at::Tensor& b, const at::Tensor& order, const at::Tensor& u);
// SIMD variant the NADE kernels run with ("avx512", "avx2" or "base").
const char* nade_cpu_isa();
// Categorical NADE: x int64 [B, D], W [H, D, K], c [H], V [D, K, H], b [D, K]; logits [B, D, K].
std::tuple<at::Tensor, at::Tensor> categorical_nade_forward(const at::Tensor& x, const at::Tensor& W,
                                                            const at::Tensor& c, const at::Tensor& V,
                                                            const at::Tensor& b, const at::Tensor& order);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> categorical_nade_backward(
    const at::Tensor& grad_log_prob, const std::optional<at::Tensor>& grad_logits, const at::Tensor& x,
    const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
    const at::Tensor& logits);
std::tuple<at::Tensor, at::Tensor> categorical_nade_sample(const at::Tensor& W, const at::Tensor& c,
                                                           const at::Tensor& V, const at::Tensor& b,
                                                           const at::Tensor& order, const at::Tensor& u);
// RNADE: x [B, D], W [H, D], c [H], V [D, 3, K, H], b [D, 3, K]; params [B, D, 3, K]; u [n, D, 2].
std::tuple<at::Tensor, at::Tensor> rnade_forward(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                                 const at::Tensor& V, const at::Tensor& b, const at::Tensor& order);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnade_backward(
    const at::Tensor& grad_log_prob, const std::optional<at::Tensor>& grad_params, const at::Tensor& x,
    const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
    const at::Tensor& params);
std::tuple<at::Tensor, at::Tensor> rnade_sample(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                                const at::Tensor& b, const at::Tensor& order, const at::Tensor& u);


// masked_linear_cpu.cpp: staircase-blocked masked linear layer (DESIGN.md section 4).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_linear_prepare(
    const at::Tensor& weight, const at::Tensor& in_degrees, const at::Tensor& out_degrees, bool strict,
    int64_t max_blocks);
at::Tensor masked_linear_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                 const at::Tensor& perm_out, const at::Tensor& row_reach,
                                 const at::Tensor& blocks, int64_t activation, bool x_sorted, bool y_sorted);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& row_reach, const at::Tensor& blocks,
    int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db);
// made_cpu.cpp: MADE/FVSBN sampling (and the affine MADE inverse) in O(parameters).
std::tuple<at::Tensor, at::Tensor> made_sample(const std::vector<at::Tensor>& weights,
                                               const std::vector<at::Tensor>& biases,
                                               const std::vector<at::Tensor>& degrees,
                                               const std::optional<at::Tensor>& direct, const at::Tensor& order,
                                               const std::optional<at::Tensor>& ctx_hidden,
                                               const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise,
                                               int64_t head, int64_t K, int64_t activation);
// masked_linear_tileref_cpu.cpp: the CUDA masked_linear kernels' tile code
// (masked_linear_math.h, masked_linear_glue.h) run serially on the CPU, for tests.
at::Tensor masked_linear_tileref_forward(const at::Tensor& x, const at::Tensor& w_sorted,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& perm_in,
                                         const at::Tensor& perm_out, const at::Tensor& in_sorted,
                                         const at::Tensor& out_sorted, bool strict, int64_t activation,
                                         bool x_sorted, bool y_sorted);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_tileref_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w_sorted,
    const at::Tensor& perm_in, const at::Tensor& perm_out, const at::Tensor& in_sorted, const at::Tensor& out_sorted,
    bool strict, int64_t activation, bool x_sorted, bool y_sorted, bool need_dx, bool need_dw, bool need_db);

// nade_rowref_cpu.cpp: the CUDA NADE kernels' row math (nade_row.h) run on the CPU,
// one lane per row, for tests. kind: 0 binary, 1 categorical, 2 RNADE.
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

}  // namespace af
