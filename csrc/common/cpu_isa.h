// The CPU's vector ISA, detected once per process: which compiled variant of the CPU kernels
// runs (the NADE family's loops, nade_cpu_common.h; the masked layer's AVX-512 training tiles,
// masked_linear_avx512_cpu.cpp). ARMODEL_FAST_ISA=base|avx2|avx512 lowers the choice (e.g. for
// benchmarks); it never raises it above what the CPU has.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>

namespace af {

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

inline Isa detect_isa() {
  Isa best = Isa::kBase;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    best = Isa::kAvx512;
#endif
  const char* env = std::getenv("ARMODEL_FAST_ISA");
  if (env != nullptr) {
    const std::string want(env);
    const Isa cap = want == "base" ? Isa::kBase : want == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    best = std::min(best, cap);
  }
  return best;
}

inline Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

inline const char* isa_name(Isa i) {
  return i == Isa::kAvx512 ? "avx512" : i == Isa::kAvx2 ? "avx2" : "base";
}

}  // namespace af
