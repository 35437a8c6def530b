// The NADE variants on the CPU as one NADE with a dense head of M outputs per step:
// the parameter layout the loops of nade_variants.inc read (the heads themselves,
// shared with the CUDA kernels, are in nade_heads.h). Used by nade_variants_cpu.cpp only.
#pragma once

#include "nade/nade_cpu_common.h"
#include "nade/nade_heads.h"

namespace af {
namespace nade_cpu {

// Parameters in step order, hidden axis padded to Hp.
template <typename T> struct DenseParams {
  int64_t D, H, Hp, K, M, C;  // M outputs per step; C input columns per dimension
  const T* WT;                // [D, C, Hp]  W[:, order[t], col]
  const T* V;                 // [D, M, Hp]  V[order[t]]
  const T* b;                 // [D, M]
  const T* c;                 // [Hp]
  const int64_t* order;
  const T* E;            // [D, C, Hp] exp(-WT) when the head carries exp(-a) (kCarry), else null
  const uint8_t* big;    // [D, C] column flags kColBig, kColNonFinite (nade_cpu_common.h)
};

template <typename T> struct DenseGrads {
  T* dWT;  // [D, C, Hp] step order
  T* dV;   // [D, M, Hp] step order
  T* dc;   // [Hp]
};

}  // namespace nade_cpu
}  // namespace af
