// Per-element math of the masked linear layer and of MADE sampling (DESIGN.md
// sections 4 and 5): the mask test, degree reach, fused activations and the
// output heads' draw / log-likelihood rules (the rules of reference/heads.py).
//
// Torch-free and `AF_HD` (host + device) so that the C++ CPU kernels and a
// later CUDA kernel share one definition; the CPU tests exercise this code.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define AF_HD __host__ __device__
#else
#define AF_HD
#endif

namespace af {
namespace ml {

// ---- masks ------------------------------------------------------------------

// M[k, j] = 1{out_deg >= in_deg} (hidden layers) or 1{out_deg > in_deg} (strict:
// output layer, direct connections, FVSBN).
AF_HD inline bool connected(int64_t out_deg, int64_t in_deg, bool strict) {
  return strict ? out_deg > in_deg : out_deg >= in_deg;
}

// Number of entries of the ascending `sorted_in[0..n)` a unit of degree
// `out_deg` is connected to: with inputs sorted by degree, the mask row of that
// unit is the prefix [0, reach). Binary search, O(log n).
AF_HD inline int64_t reach(const int64_t* sorted_in, int64_t n, int64_t out_deg, bool strict) {
  int64_t lo = 0, hi = n;  // first index whose input is NOT connected
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (connected(out_deg, sorted_in[mid], strict)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// ---- activations ------------------------------------------------------------

enum Activation : int64_t { kNone = 0, kRelu = 1, kElu = 2, kTanh = 3 };

template <typename T>
AF_HD inline T activate(T v, int64_t act) {
  switch (act) {
    case kRelu:
      return v > T(0) ? v : T(0);
    case kElu:
      return v > T(0) ? v : T(std::expm1(v));
    case kTanh:
      return T(std::tanh(v));
    default:
      return v;
  }
}

// d act / d pre-activation, written in terms of the output y = act(pre)
// (so backward needs only the saved output): relu 1{y > 0}, elu (alpha = 1)
// 1 if y > 0 else y + 1, tanh 1 - y^2.
template <typename T>
AF_HD inline T activation_grad_from_output(T y, int64_t act) {
  switch (act) {
    case kRelu:
      return y > T(0) ? T(1) : T(0);
    case kElu:
      return y > T(0) ? T(1) : y + T(1);
    case kTanh:
      return T(1) - y * y;
    default:
      return T(1);
  }
}

// ---- output heads (reference/heads.py) ----------------------------------------

constexpr double kLogSqrt2Pi = 0.91893853320467274178;  // 0.5 * log(2 pi)

template <typename T>
AF_HD inline T softplus(T v) {  // log(1 + e^v), stable, like F.softplus (threshold 20)
  return v > T(20) ? v : T(std::log1p(std::exp(v)));
}

template <typename T>
AF_HD inline T sigmoid(T v) {
  return T(1) / (T(1) + T(std::exp(-v)));
}

// Bernoulli: x = 1{u < sigmoid(logit)}; log p(x) = x*logit - softplus(logit).
template <typename T>
AF_HD inline T bernoulli_draw(T logit, T u) {
  return u < sigmoid(logit) ? T(1) : T(0);
}

template <typename T>
AF_HD inline T bernoulli_log_prob(T logit, T x) {
  return x * logit - softplus(logit);
}

// log sum_k exp(logits[k * stride]), k < K.
template <typename T>
AF_HD inline T log_sum_exp(const T* logits, int64_t stride, int64_t K) {
  T m = logits[0];
  for (int64_t k = 1; k < K; ++k) m = logits[k * stride] > m ? logits[k * stride] : m;
  T s = T(0);
  for (int64_t k = 0; k < K; ++k) s += T(std::exp(logits[k * stride] - m));
  return m + T(std::log(s));
}

// Categorical inverse-CDF rule: x = #{k < K-1 : cdf_k <= u}, cdf of softmax(logits).
template <typename T>
AF_HD inline int64_t categorical_draw(const T* logits, int64_t stride, int64_t K, T u) {
  T m = logits[0];
  for (int64_t k = 1; k < K; ++k) m = logits[k * stride] > m ? logits[k * stride] : m;
  T total = T(0);
  for (int64_t k = 0; k < K; ++k) total += T(std::exp(logits[k * stride] - m));
  T cdf = T(0);
  int64_t x = 0;
  for (int64_t k = 0; k < K - 1; ++k) {
    cdf += T(std::exp(logits[k * stride] - m)) / total;
    x += cdf <= u ? 1 : 0;
  }
  return x;
}

template <typename T>
AF_HD inline T categorical_log_prob(const T* logits, int64_t stride, int64_t K, int64_t x) {
  return logits[x * stride] - log_sum_exp(logits, stride, K);
}

// Mixture of K Gaussians; params laid out [logits(K), mu(K), log_sigma(K)] with
// `stride` between consecutive entries. u0 picks the component, z = Phi^-1(u1).
template <typename T>
AF_HD inline T gaussian_mixture_draw(const T* p, int64_t stride, int64_t K, T u0, T z) {
  const int64_t k = categorical_draw(p, stride, K, u0);
  return p[(K + k) * stride] + T(std::exp(p[(2 * K + k) * stride])) * z;
}

template <typename T>
AF_HD inline T gaussian_mixture_log_prob(const T* p, int64_t stride, int64_t K, T x) {
  const T lse_w = log_sum_exp(p, stride, K);
  T m = T(0), s = T(0);
  for (int64_t pass = 0; pass < 2; ++pass) {  // pass 0: max, pass 1: sum of exp
    for (int64_t k = 0; k < K; ++k) {
      const T ls = p[(2 * K + k) * stride];
      const T z = (x - p[(K + k) * stride]) * T(std::exp(-ls));
      const T term = p[k * stride] - lse_w - T(0.5) * z * z - ls - T(kLogSqrt2Pi);
      if (pass == 0) {
        m = (k == 0 || term > m) ? term : m;
      } else {
        s += T(std::exp(term - m));
      }
    }
  }
  return m + T(std::log(s));
}

}  // namespace ml
}  // namespace af
