// Shared host-side pieces of the NADE CPU kernels (nade_cpu.cpp,
// nade_variants_cpu.cpp): run-time ISA dispatch, work partitioning, argument
// checks and parameter layout. The vector loops are in nade_simd.inc.
//
// Layout: every kernel gathers the parameters once per call into "step order"
// (row t belongs to dimension order[t]) and pads the hidden axis to Hp, a
// multiple of one 64-byte vector, with zeros; the hidden-unit loops then run
// over whole vectors with no remainder, and every row starts 64-byte aligned.
//
// Vectorisation without -march=native: the hot loops (nade_simd.inc and each
// kernel's .inc) are compiled three times, for avx512, avx2+fma and the
// baseline; AF_NADE_WITH_ISA picks one at run time from the CPU
// (ARMODEL_FAST_ISA=base|avx2|avx512 lowers the choice, e.g. for benchmarks).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "nade/nade_math.h"

namespace af {
namespace nade_cpu {

// ---------------------------------------------------------------- ISA dispatch

using ::af::Isa;  // (common/cpu_isa.h: shared with the masked layer's AVX-512 kernels)
using ::af::isa;
using ::af::isa_name;

// A kernel .cpp compiles its loops (nade_simd.inc + its own .inc) once per ISA,
// inside namespaces avx512 / avx2 / base, through nade/nade_isa_copies.inc:
//
//   AF_NADE_ISA_BEGIN(avx512, "avx512f,...", kAvx512) #include ... AF_NADE_ISA_END
//
// (kIsa names the ISA inside the region: GCC does not define __AVX512F__ there.)
//
// `#pragma GCC target` applies to every function in the region, helpers and
// templates included, so the generic 64-byte vector code becomes native zmm /
// ymm code there (an always-inline helper compiled for the baseline would be
// split into SSE pieces before it is inlined).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AF_HAVE_ISA_VARIANTS 1
#define AF_NADE_PRAGMA(x) _Pragma(#x)
#define AF_NADE_ISA_BEGIN(ns, flags, isa_enum) \
  AF_NADE_PRAGMA(GCC push_options)             \
  AF_NADE_PRAGMA(GCC target(flags))            \
  namespace af {                               \
  namespace nade_cpu {                         \
  namespace ns {                               \
  constexpr Isa kIsa = Isa::isa_enum;
#define AF_NADE_ISA_END \
  }                     \
  }                     \
  }                     \
  AF_NADE_PRAGMA(GCC pop_options)
#define AF_TARGET_AVX512 "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,popcnt,f16c,prefer-vector-width=512"
#define AF_TARGET_AVX2 "avx2,fma,bmi,bmi2,popcnt,f16c"
#endif

// f(kernels) with the namespace's kernel struct of the chosen ISA, e.g.
//   AF_NADE_WITH_ISA(Binary, [&](auto k) { decltype(k)::template forward<T>(...); });
#ifdef AF_HAVE_ISA_VARIANTS
#define AF_NADE_WITH_ISA(Kernels, ...)                                          \
  do {                                                                          \
    switch (::af::nade_cpu::isa()) {                                            \
      case ::af::nade_cpu::Isa::kAvx512: (__VA_ARGS__)(::af::nade_cpu::avx512::Kernels{}); break; \
      case ::af::nade_cpu::Isa::kAvx2: (__VA_ARGS__)(::af::nade_cpu::avx2::Kernels{}); break;     \
      default: (__VA_ARGS__)(::af::nade_cpu::base::Kernels{}); break;                     \
    }                                                                           \
  } while (0)
#else
#define AF_NADE_WITH_ISA(Kernels, ...) (__VA_ARGS__)(::af::nade_cpu::base::Kernels{})
#endif

// ---------------------------------------------------------------- sizes

constexpr int kRows = 4;                   // batch rows processed together (one W / V load serves all)
constexpr int64_t kCheckpointEvery = 32;   // backward: exact copies of a every this many steps

template <typename T> constexpr int64_t kLanes = 64 / sizeof(T);  // one 64-byte vector

// Flags of a parameter column (the `big` arrays): kColBig, some |w| > Limits::kClamp or
// not finite (updates by it take the exact a-mode path); kColNonFinite, some w is inf or
// NaN, so even x_d = 0 must update (0 * w is NaN there, as in the reference's a + x_d w).
constexpr uint8_t kColBig = 1, kColNonFinite = 2;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---------------------------------------------------------------- partitioning

// Forward and sampling split the batch into blocks of rows; backward splits the
// hidden units into slices (given the saved logits, the backward recurrence of
// each hidden unit is independent of the others, so each slice owns its columns
// of dW, dV and dc: no partial buffers, no reduction, the same bits for any
// thread count). Items are handed out dynamically, so a thread that the OS
// preempts delays the end by one item at most.

inline int64_t num_workers(int64_t items) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)); }

// f(item, worker) for item in [0, n); worker in [0, num_workers(n)) owns its scratch memory.
template <class F> void parallel_items(int64_t n, const F& f) {
  if (n <= 0) return;
  const int64_t nw = num_workers(n);
  if (nw == 1) {
    for (int64_t i = 0; i < n; ++i) f(i, int64_t(0));
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nw, 1, [&](int64_t w0, int64_t) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) f(i, w0);
  });
}

// Hidden slices for backward: [slice * width, ...) in units of whole vectors.
struct Slices {
  int64_t n = 0, width = 0;  // width in elements, a multiple of the vector length
};

inline Slices make_slices(int64_t Hp, int64_t lanes) {
  // Independent of the thread count, so results (RNADE's dx sums partial dot
  // products per slice) are the same bits for any number of threads. Slices of
  // >= 16 vectors keep the per-step overhead small (measured: 8 -> 16 vectors cut the
  // backward by a quarter at H=500); up to 16 slices for wide H.
  const int64_t vecs = Hp / lanes;
  Slices sl;
  if (vecs == 0) return sl;
  const int64_t per = std::max<int64_t>(16, (vecs + 15) / 16);
  sl.width = per * lanes;
  sl.n = (vecs + per - 1) / per;
  return sl;
}

// ---------------------------------------------------------------- checks

inline void check_param(const at::Tensor& t, const char* name, std::initializer_list<int64_t> shape,
                        const char* shape_names) {
  check_defined(t, name);
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, name, " must be a dense (strided) tensor, got layout ",
                   t.layout());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the cpp backend, got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(shape.size()) &&
                        std::equal(shape.begin(), shape.end(), t.sizes().begin()),
                    name, " must have shape ", shape_names, " = ", at::IntArrayRef(shape), ", got ", t.sizes());
  check_contiguous(t, name);
}

inline void check_dtype_as(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have the same dtype as ", ref_name, " (",
                   ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_uniforms(const at::Tensor& u, const char* name) {
  TORCH_CHECK_VALUE(u.numel() == 0 || ((u >= 0) & (u <= 1)).all().item<bool>(), name,
                    " must hold uniforms in [0, 1]");
}

// ---------------------------------------------------------------- binary NADE (nade_cpu.cpp)

// The binary kernels, on arguments the entry points (nade_variants_cpu.cpp) have checked:
// contiguous CPU tensors of one dtype (float or double), x 0/1, u in [0, 1]. Outputs are
// preallocated: logits / x [B, D], lp [B]. binary_backward returns [dW, dc, dV, db].
void binary_forward(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                    const at::Tensor& b, const at::Tensor& order, at::Tensor& logits, at::Tensor& lp);
void binary_sample(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                   const at::Tensor& order, const at::Tensor& u, at::Tensor& x, at::Tensor& lp);
std::vector<at::Tensor> binary_backward(const at::Tensor& grad_log_prob, const at::Tensor& grad_logits,
                                        const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                        const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
                                        const at::Tensor& logits);

// ---------------------------------------------------------------- layout

// m [..., H] -> [..., Hp] (padded with `pad`), rows gathered in step order along dim 0.
inline at::Tensor step_rows_padded(const at::Tensor& m, const at::Tensor& order, int64_t Hp, double pad = 0.0) {
  auto sizes = m.sizes().vec();
  const int64_t H = sizes.back();
  sizes.back() = Hp;
  at::Tensor out = at::full(sizes, pad, m.options());
  out.narrow(-1, 0, H).copy_(m.index_select(0, order));
  return out;
}

inline at::Tensor padded_vector(const at::Tensor& c, int64_t Hp) {
  at::Tensor out = at::zeros({Hp}, c.options());
  out.narrow(0, 0, c.size(0)).copy_(c);
  return out;
}

}  // namespace nade_cpu
}  // namespace af
