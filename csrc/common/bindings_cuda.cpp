// The pybind11 module armodel_fast._C_cuda: CUDA kernels (built only with a
// CUDA-enabled torch and nvcc; see setup.py). Ops are declared in common/ops.h, with
// the CPU module's (bindings.cpp): the NADE entry points have the same signatures.
#include <torch/extension.h>

#include "common/ops.h"

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "armodel-fast CUDA kernels";
  // NADE family; kind: 0 binary, 1 categorical, 2 RNADE (nade/nade_kinds.h; layouts as the reference).
  m.def("nade_forward", &af::nade_cuda_forward, py::arg("kind"), py::arg("x"), py::arg("W"), py::arg("c"),
        py::arg("V"), py::arg("b"), py::arg("order"), "(log_prob [B], outputs [B, D, ...])");
  m.def("nade_sample", &af::nade_cuda_sample, py::arg("kind"), py::arg("W"), py::arg("c"), py::arg("V"),
        py::arg("b"), py::arg("order"), py::arg("u"), "(x [n, D], log_prob [n]) from uniforms u");
  m.def("nade_backward", &af::nade_cuda_backward, py::arg("kind"), py::arg("grad"), py::arg("grad_outputs"),
        py::arg("x"), py::arg("W"), py::arg("c"), py::arg("V"), py::arg("b"), py::arg("order"), py::arg("outputs"),
        "[dW, dc, dV, db, dx or None] of sum(grad * log_prob) + sum(grad_outputs * outputs)");
  // masked_linear on degree-sorted prepared weights (armodel_fast.ops.masked_linear.prepare_sorted).
  m.def("masked_linear_forward", &af::masked_linear_cuda_forward, py::arg("x"), py::arg("w_sorted"), py::arg("bias"),
        py::arg("perm_in"), py::arg("perm_out"), py::arg("in_sorted"), py::arg("out_sorted"), py::arg("strict"),
        py::arg("activation"), py::arg("x_sorted"), py::arg("y_sorted"), "act(x @ (W*M).T + bias)");
  m.def("masked_linear_backward", &af::masked_linear_cuda_backward, py::arg("grad_y"), py::arg("x"), py::arg("y"),
        py::arg("w_sorted"), py::arg("perm_in"), py::arg("perm_out"), py::arg("in_sorted"), py::arg("out_sorted"),
        py::arg("strict"), py::arg("activation"), py::arg("x_sorted"), py::arg("y_sorted"), py::arg("need_dx"),
        py::arg("need_dw"), py::arg("need_db"), "(dx, dW (masked), db)");
  // MADE / FVSBN sampling in one launch; operands as the CPU made_sample (armodel_fast.ops.made).
  m.def("made_sample", &af::made_cuda_sample, py::arg("weights"), py::arg("biases"), py::arg("degrees"),
        py::arg("direct"), py::arg("order"), py::arg("ctx_hidden"), py::arg("ctx_out"), py::arg("noise"),
        py::arg("head"), py::arg("K"), py::arg("activation"), py::arg("program") = std::vector<int64_t>{},
        "(x [n, D], log_prob [n]) in one launch");
}
