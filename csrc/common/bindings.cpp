// The pybind11 module armodel_fast._C: the only PYBIND11_MODULE of the CPU
// extension. Ops are declared in common/ops.h and bound in the "---- ops ----" section.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "common/checks.h"
#include "common/ops.h"

namespace py = pybind11;

namespace {

// Widest SIMD instruction set this CPU supports (run-time detection; the
// extension itself is compiled for a portable baseline, no -march=native).
const char* detect_simd() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  if (__builtin_cpu_supports("avx")) return "avx";
  if (__builtin_cpu_supports("sse4.2")) return "sse4.2";
  return "sse2";
#elif defined(__aarch64__) || defined(__ARM_NEON)
  return "neon";
#else
  return "none";
#endif
}

py::dict build_info() {
  py::dict info;
#if defined(_OPENMP) && defined(AF_WITH_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["num_threads"] = at::get_num_threads();
#if defined(__GNUC__) && !defined(__clang__)
  info["compiler"] = "GCC " __VERSION__;
#elif defined(__VERSION__)
  info["compiler"] = __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["simd"] = detect_simd();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "armodel-fast C++ CPU kernels";

  m.def("build_info", &build_info,
        "Dict describing this build: openmp, num_threads, compiler, simd (detected at run time).");
  m.def(
      "check_order",
      [](const at::Tensor& order, int64_t D) { af::check_order(order, D, "order"); },
      py::arg("order"), py::arg("D"),
      "Raise ValueError/TypeError unless `order` is an int64 1-D permutation of 0..D-1.");

  // ---- ops (declared in common/ops.h) ----
  // NADE family: the same three entry points as armodel_fast._C_cuda (bindings_cuda.cpp);
  // kind: 0 binary, 1 categorical, 2 RNADE (nade/nade_kinds.h), layouts as the reference.
  m.def("nade_forward", &af::nade_forward, py::arg("kind"), py::arg("x"), py::arg("W"), py::arg("c"), py::arg("V"),
        py::arg("b"), py::arg("order"), "(log_prob [B], outputs [B, D, ...])");
  m.def("nade_sample", &af::nade_sample, py::arg("kind"), py::arg("W"), py::arg("c"), py::arg("V"), py::arg("b"),
        py::arg("order"), py::arg("u"), "(x [n, D], log_prob [n]) from uniforms u");
  m.def("nade_backward", &af::nade_backward, py::arg("kind"), py::arg("grad"), py::arg("grad_outputs"),
        py::arg("x"), py::arg("W"), py::arg("c"), py::arg("V"), py::arg("b"), py::arg("order"), py::arg("outputs"),
        "[dW, dc, dV, db, dx or None] of sum(grad * log_prob) + sum(grad_outputs * outputs)");
  m.def("nade_cpu_isa", &af::nade_cpu_isa, "SIMD variant the NADE CPU kernels run with: avx512, avx2 or base.");
  m.def("nade_rowref_forward", &af::nade_rowref_forward, py::arg("kind"), py::arg("x"), py::arg("W"), py::arg("c"),
        py::arg("V"), py::arg("b"), py::arg("order"),
        "CUDA NADE row math on the CPU (tests): (log_prob [B], outputs [B, D, ...]).");
  m.def("nade_rowref_sample", &af::nade_rowref_sample, py::arg("kind"), py::arg("W"), py::arg("c"), py::arg("V"),
        py::arg("b"), py::arg("order"), py::arg("u"), "CUDA NADE row math on the CPU (tests): (x, log_prob).");
  m.def("nade_rowref_backward", &af::nade_rowref_backward, py::arg("kind"), py::arg("grad"), py::arg("x"),
        py::arg("W"), py::arg("c"), py::arg("V"), py::arg("b"), py::arg("order"), py::arg("outputs"),
        py::arg("grad_outputs") = py::none(),
        "CUDA NADE row math on the CPU (tests): [dW, dc, dV, db, dx or None] of sum(grad * log_prob) "
        "+ sum(grad_outputs * outputs).");
  m.def("masked_linear_prepare", &af::masked_linear_prepare, py::arg("weight"), py::arg("in_degrees"),
        py::arg("out_degrees"), py::arg("strict"), py::arg("max_blocks"),
        "Sort by degree, cut the staircase into blocks, gather the masked weights: "
        "(w_sorted, perm_in, perm_out, row_reach, blocks).");
  m.def("masked_linear_forward", &af::masked_linear_forward, py::arg("x"), py::arg("w_sorted"), py::arg("bias"),
        py::arg("perm_in"), py::arg("perm_out"), py::arg("row_reach"), py::arg("blocks"), py::arg("activation"),
        py::arg("x_sorted"), py::arg("y_sorted"), py::arg("slabs") = py::none(), py::arg("in_place") = false,
        "act(x @ (W*M).T + bias) from prepared weights (x / y in degree-sorted unit order if *_sorted); "
        "in_place: w_sorted is the caller's W (identity permutations, blocks [nb, 4] with slabs).");
  m.def("masked_linear_backward", &af::masked_linear_backward, py::arg("grad_y"), py::arg("x"), py::arg("y"),
        py::arg("w_sorted"), py::arg("perm_in"), py::arg("perm_out"), py::arg("row_reach"), py::arg("blocks"),
        py::arg("activation"), py::arg("x_sorted"), py::arg("y_sorted"), py::arg("need_dx"), py::arg("need_dw"),
        py::arg("need_db"), py::arg("slabs") = py::none(), py::arg("in_place") = false,
        "(dx, dW (masked), db) of the masked linear layer.");
  m.def("masked_linear_plan", &af::masked_linear_plan, py::arg("in_degrees"), py::arg("out_degrees"),
        py::arg("strict"), py::arg("max_blocks"),
        "Degree sort and staircase blocks without weights: (perm_in, perm_out, row_reach, blocks [nb, 4] = "
        "(row_begin, row_end, c0, c1), identity).");
  m.def("masked_linear_slabs", &af::masked_linear_slabs, py::arg("weight"), py::arg("row_reach"), py::arg("blocks"),
        "The masked copies of W[r0:r1, c0:c1] of each block (flat), for in_place kernels.");
  m.def("masked_linear_release_buffers", &af::masked_linear_release_buffers,
        "Drop the grad W blocks kept for reuse by the AVX-512 training kernels; returns the bytes freed.");
  m.def("masked_linear_train_kernels", &af::masked_linear_train_kernels,
        "The in_place (degree-sorted) path's fp32 kernels here: 'avx512' (register tiles, slabs unused) or 'blas'.");
  m.def("masked_linear_train_forward", &af::masked_linear_train_forward, py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("row_reach"), py::arg("activation"), py::arg("perm_in") = py::none(),
        py::arg("perm_out") = py::none(),
        "Training forward on an fp32 layer (AVX-512 kernels; perm_in / perm_out: the stable degree sorts where "
        "the degrees are not in order, row_reach the sorted rows'): (y, ok); ok False (y None, nothing "
        "computed) when x or W holds NaN/inf.");
  m.def("masked_linear_train_backward", &af::masked_linear_train_backward, py::arg("grad_y"), py::arg("x"),
        py::arg("y"), py::arg("weight"), py::arg("bias"), py::arg("row_reach"), py::arg("activation"),
        py::arg("need_dx"), py::arg("need_dw"), py::arg("need_db"), py::arg("check_inputs"),
        py::arg("perm_in") = py::none(), py::arg("perm_out") = py::none(),
        "Its backward: (dx, dW (masked), db, ok); ok False (nothing computed) when grad_y or the bias (with "
        "check_inputs also x or any weight) holds NaN/inf.");
  m.def("masked_linear_any_nonfinite", &af::masked_linear_any_nonfinite, py::arg("t"),
        "Whether t holds a NaN or an infinity (exact, one pass, no temporary).");
  m.def("any_nonbinary", &af::any_nonbinary, py::arg("t"),
        "Whether t holds a value other than 0 and 1 (exact, one pass over the bits, no temporary).");
  m.def("made_inverse_sweep", &af::made_inverse_sweep, py::arg("weights"), py::arg("act_in"), py::arg("skip"),
        py::arg("unit_bounds"), py::arg("reaches"), py::arg("acc"), py::arg("acc_act"), py::arg("in_derivs"),
        py::arg("derivs"), py::arg("deltas"), py::arg("acc_x"), py::arg("c_out"), py::arg("head"), py::arg("gl_ds"),
        py::arg("w_out"), py::arg("out_reach"), py::arg("w_dir"), py::arg("dir_reach"), py::arg("D"), py::arg("top"),
        "The reverse sweep of the affine MADE inverse's adjoint (ops/made/inverse_grad.py), in place on acc, "
        "acc_act, deltas, acc_x and c_out.");
  m.def("affine_density_forward", &af::affine_density_forward, py::arg("x"), py::arg("raw"), py::arg("clip"),
        "The affine MADE's density direction: (z, log|det dz/dx|, 1/sigma, x - mu) from x and the raw outputs.");
  m.def("affine_density_backward", &af::affine_density_backward, py::arg("grad_z"), py::arg("grad_logdet"),
        py::arg("raw"), py::arg("inv_sigma"), py::arg("centered"), py::arg("clip"), py::arg("need_dx"),
        "Backward of affine_density_forward: (grad x or None, grad raw).");
  m.def("bernoulli_log_prob_forward", &af::bernoulli_log_prob_forward, py::arg("logits"), py::arg("x"),
        "The Bernoulli head: log p(x) [B] = sum_d x*l - softplus(l) of the logits [B, D].");
  m.def("bernoulli_log_prob_backward", &af::bernoulli_log_prob_backward, py::arg("grad"), py::arg("logits"),
        py::arg("x"), "Backward of bernoulli_log_prob_forward: grad logits = grad[:, None] * x - grad[:, None] * softplus'(l).");
  m.def("made_sample", &af::made_sample, py::arg("weights"), py::arg("biases"), py::arg("degrees"),
        py::arg("direct"), py::arg("order"), py::arg("ctx_hidden"), py::arg("ctx_out"), py::arg("noise"),
        py::arg("head"), py::arg("K"), py::arg("activation"),
        py::arg("program") = std::vector<int64_t>{},
        "Draw all D dimensions of MADE/FVSBN samples from prepared weights in one call: (x, log_prob).");
  m.def("masked_linear_tileref_forward", &af::masked_linear_tileref_forward, py::arg("x"), py::arg("w_sorted"),
        py::arg("bias"), py::arg("perm_in"), py::arg("perm_out"), py::arg("in_sorted"), py::arg("out_sorted"),
        py::arg("strict"), py::arg("activation"), py::arg("x_sorted"), py::arg("y_sorted"),
        "CUDA masked_linear tile code on the CPU (tests): act(x @ (W*M).T + bias).");
  m.def("masked_linear_tileref_backward", &af::masked_linear_tileref_backward, py::arg("grad_y"), py::arg("x"),
        py::arg("y"), py::arg("w_sorted"), py::arg("perm_in"), py::arg("perm_out"), py::arg("in_sorted"),
        py::arg("out_sorted"), py::arg("strict"), py::arg("activation"), py::arg("x_sorted"), py::arg("y_sorted"),
        py::arg("need_dx"), py::arg("need_dw"), py::arg("need_db"),
        "CUDA masked_linear tile code on the CPU (tests): (dx, dW (masked), db).");
}
