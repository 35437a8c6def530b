// Categorical NADE and RNADE on the CPU as one NADE with a dense head of M
// outputs per step: the parameter layout the loops of nade_variants.inc read and
// the two head policies (log-likelihood, its gradient, the inverse-CDF draw;
// the math is nade_math.h, shared with the CUDA kernels). Used by
// nade_variants_cpu.cpp only.
#pragma once

#include "nade/nade_cpu_common.h"

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
  const T* E;            // [D, C, Hp] exp(-WT) when the head carries exp(-a) (categorical), else null
  const uint8_t* big;    // [D, C] some |WT[t, col, :]| > Limits<T>::kClamp (with E)
};

template <typename T> struct DenseGrads {
  T* dWT;  // [D, C, Hp] step order
  T* dV;   // [D, M, Hp] step order
  T* dc;   // [Hp]
};

template <typename T> struct CategoricalHead {
  using X = int64_t;
  static constexpr int kU = 1;  // uniforms per draw
  // An input adds a whole column (scale 1): the forward carries s = exp(-a) and
  // multiplies it by the precomputed exp(-column) instead of a sigmoid per unit.
  static constexpr bool kCarry = true;
  static constexpr bool kSoftmax = true;  // the forward's log-softmax / draw use vectorised exps (nade_simd.inc)
  static AF_FI int64_t column(X x) { return x; }
  static AF_FI T scale(X) { return T(1); }
  static AF_FI T log_prob(const T* out, int64_t K, X x) { return nade::categorical_log_prob(out, K, x); }
  static AF_FI X draw(const T* out, int64_t K, const T* u) { return nade::categorical_draw(out, K, u[0]); }
  // g[0:M] += G * dlogp/dout; returns G * dlogp/dx (none for a discrete x).
  static AF_FI T grad(const T* out, int64_t K, X x, T G, T* g) {
    nade::categorical_grad(out, K, x, G, g);
    return T(0);
  }
};

template <typename T> struct MixtureHead {
  using X = T;
  static constexpr int kU = 2;
  static constexpr bool kCarry = false;  // a += x W[:, d]: exp(-x w) has no precomputed form
  static constexpr bool kSoftmax = false;
  static AF_FI int64_t column(X) { return 0; }
  static AF_FI T scale(X x) { return x; }
  static AF_FI T log_prob(const T* out, int64_t K, X x) {
    return nade::mixture_log_prob(out, out + K, out + 2 * K, K, x);
  }
  static AF_FI X draw(const T* out, int64_t K, const T* u) {
    return nade::mixture_draw(out, out + K, out + 2 * K, K, u[0], u[1]);
  }
  static AF_FI T grad(const T* out, int64_t K, X x, T G, T* g) {
    return nade::mixture_grad(out, out + K, out + 2 * K, K, x, G, g, g + K, g + 2 * K);
  }
};

}  // namespace nade_cpu
}  // namespace af
