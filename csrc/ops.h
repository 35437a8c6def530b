// Forward declarations of every op bound into armodel_fast._C.
//
// Each op lives in its own csrc/<op>.cpp (e.g. nade_log_prob.cpp) and defines
// its launcher in namespace af; declare it here and add one m.def(...) line to
// the "---- ops ----" section of bindings.cpp. Keep this header light: it must
// not pull in <torch/extension.h> or pybind11.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace af {

// (no ops yet)

}  // namespace af
