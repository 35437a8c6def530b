// The output heads of the NADE family (docs/DESIGN.md section 2, variants), written once for
// every kernel: the CPU dense kernel (nade_variants.inc), the CUDA kernels and their CPU
// row-reference (nade_row.h). A head says how an input enters the hidden pre-activation
// (a += scale(x_d) * W[:, d, column(x_d)]), how many outputs each dimension has, and gives
// the log-likelihood, its gradient and the inverse-CDF draw (math in nade_math.h).
//
// To add a variant: write its head here and add its line to AF_NADE_KINDS at the end of
// this file (the kind number is the Python spec's ``kind``).
//
// Members:
//   X               the type of x: T (real or 0/1) or int64_t (a class index)
//   kU              uniforms per dimension for a draw
//   kOutRank        trailing dims of the outputs per dimension: 0 [], 1 [K], 2 [P / K, K]
//   kRealX          x is a continuous variable: the backward also returns dx
//   kCarry          (CPU) an input adds a whole column (scale 1): carry s = exp(-a)
//   kSoftmax        (CPU) the outputs are K logits: vectorised log-softmax and draw
//   P(K), Kin(K)    outputs per dimension; input columns per dimension
//   column, scale   the input update above
//   valid_x         the value check of x (x_rule: its message, after "x")
//   log_prob, draw, grad (grad adds G * dlogp/dout to dl, returns G * dlogp/dx)
#pragma once

#include "nade/nade_math.h"

namespace af {
namespace nade {

// Binary: x in {0, 1}; a <- a + W[:, d] x_d; one logit.
template <typename T> struct BinaryHead {
  using X = T;
  static constexpr int kU = 1;
  static constexpr int kOutRank = 0;
  static constexpr bool kRealX = false;
  static constexpr bool kCarry = true;
  static constexpr bool kSoftmax = false;
  static constexpr const char* kXRule = " must be binary (values 0 or 1) for a Bernoulli model";
  static AF_HD AF_FI int64_t P(int64_t) { return 1; }
  static AF_HD AF_FI int64_t Kin(int64_t) { return 1; }
  static AF_HD AF_FI bool valid_x(X x, int64_t) { return x == T(0) || x == T(1); }
  static AF_HD AF_FI int64_t column(X) { return 0; }
  static AF_HD AF_FI T scale(X x) { return x; }
  static AF_HD AF_FI T log_prob(const T* l, int64_t, X x) { return bernoulli_log_prob(l[0], x); }
  static AF_HD AF_FI X draw(const T* l, int64_t, const T* u) { return bernoulli_draw(l[0], u[0]); }
  static AF_HD AF_FI T grad(const T* l, int64_t, X x, T G, T* dl) {
    dl[0] += G * bernoulli_dlogit(l[0], x);
    return T(0);
  }
};

// Categorical: x an int64 class; a <- a + W[:, d, x_d]; K logits.
template <typename T> struct CategoricalHead {
  using X = int64_t;
  static constexpr int kU = 1;
  static constexpr int kOutRank = 1;
  static constexpr bool kRealX = false;
  static constexpr bool kCarry = true;
  static constexpr bool kSoftmax = true;
  static constexpr const char* kXRule = " values must lie in [0, K=";  // K, ")" follow
  static AF_HD AF_FI int64_t P(int64_t K) { return K; }
  static AF_HD AF_FI int64_t Kin(int64_t K) { return K; }
  static AF_HD AF_FI bool valid_x(X x, int64_t K) { return x >= 0 && x < K; }
  static AF_HD AF_FI int64_t column(X x) { return x; }
  static AF_HD AF_FI T scale(X) { return T(1); }
  static AF_HD AF_FI T log_prob(const T* l, int64_t K, X x) { return categorical_log_prob(l, K, x); }
  static AF_HD AF_FI X draw(const T* l, int64_t K, const T* u) { return categorical_draw(l, K, u[0]); }
  static AF_HD AF_FI T grad(const T* l, int64_t K, X x, T G, T* dl) {
    categorical_grad(l, K, x, G, dl);
    return T(0);
  }
};

// Mixture of K Gaussians (RNADE): outputs [3, K] = logits, means, log-scales; a <- a + W[:, d] x_d.
template <typename T> struct MixtureHead {
  using X = T;
  static constexpr int kU = 2;
  static constexpr int kOutRank = 2;
  static constexpr bool kRealX = true;
  static constexpr bool kCarry = false;  // a += x W[:, d]: exp(-x w) has no precomputed form
  static constexpr bool kSoftmax = false;
  static constexpr const char* kXRule = " must be finite";
  static AF_HD AF_FI int64_t P(int64_t K) { return 3 * K; }
  static AF_HD AF_FI int64_t Kin(int64_t) { return 1; }
  static AF_HD AF_FI bool valid_x(X x, int64_t) { return x - x == T(0); }  // false for inf and NaN
  static AF_HD AF_FI int64_t column(X) { return 0; }
  static AF_HD AF_FI T scale(X x) { return x; }
  static AF_HD AF_FI T log_prob(const T* l, int64_t K, X x) { return mixture_log_prob(l, l + K, l + 2 * K, K, x); }
  static AF_HD AF_FI X draw(const T* l, int64_t K, const T* u) {
    return mixture_draw(l, l + K, l + 2 * K, K, u[0], u[1]);
  }
  static AF_HD AF_FI T grad(const T* l, int64_t K, X x, T G, T* dl) {
    return mixture_grad(l, l + K, l + 2 * K, K, x, G, dl, dl + K, dl + 2 * K);
  }
};

}  // namespace nade
}  // namespace af

// The `kind` argument of the native NADE entry points, one line per variant:
// X(kind, head, name). Every kind switch goes through nade::visit_kind (nade_kinds.h).
#define AF_NADE_KINDS(X)                  \
  X(0, BinaryHead, "binary")              \
  X(1, CategoricalHead, "categorical")    \
  X(2, MixtureHead, "RNADE")
