// Per-element math of the masked linear layer and of MADE sampling (docs/DESIGN.md
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
    case kRelu:  // NaN passes through, as torch.relu
      return v < T(0) ? T(0) : v;
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

// ---- tiled masked products (docs/DESIGN.md section 4) -----------------------------
//
// What the CUDA tile kernels (masked_linear_cuda.cu) and their CPU tile-reference
// (masked_linear_tileref_cpu.cpp) share: the tile shape, the tile classification
// on degree-sorted units, the per-element mask, the k range an output tile needs,
// operand loads and the epilogue. Units are sorted by degree (ascending, stable),
// so mask rows are prefixes of the inputs and mask columns suffixes of the
// outputs: a tile is all zero if its largest output degree misses its smallest
// input degree, all one if its smallest output degree reaches its largest.

constexpr int kTileM = 64;  // C tile rows
constexpr int kTileN = 64;  // C tile columns
constexpr int kTileK = 16;  // depth of one shared-memory step

enum TileKind : int { kTileZero = 0, kTileOnes = 1, kTileMixed = 2 };

// Mask tile of sorted outputs [o0, o1) x sorted inputs [i0, i1) (both non-empty).
AF_HD inline TileKind classify_tile(const int64_t* out_sorted, int64_t o0, int64_t o1, const int64_t* in_sorted,
                                    int64_t i0, int64_t i1, bool strict) {
  if (!connected(out_sorted[o1 - 1], in_sorted[i0], strict)) return kTileZero;
  if (connected(out_sorted[o0], in_sorted[i1 - 1], strict)) return kTileOnes;
  return kTileMixed;
}

// M[o, i] inside a tile of that kind: the compare runs only on mixed tiles.
AF_HD inline bool tile_connected(TileKind kind, int64_t out_deg, int64_t in_deg, bool strict) {
  return kind == kTileOnes || (kind == kTileMixed && connected(out_deg, in_deg, strict));
}

// First of the ascending `sorted_out[0..n)` connected to an input of degree
// `in_deg` (n if none): the mask column of that input is the suffix [first, n).
AF_HD inline int64_t first_reaching(const int64_t* sorted_out, int64_t n, int64_t in_deg, bool strict) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (connected(sorted_out[mid], in_deg, strict)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Slot e (0 <= e < rows * kTileK) of a shared-memory operand tile: row r, depth k.
// Consecutive e walk the operand's contiguous dimension (coalesced loads).
AF_HD inline void tile_slot(int e, bool k_contiguous, int rows, int* r, int* k) {
  if (k_contiguous) {
    *r = e / kTileK;
    *k = e % kTileK;
  } else {
    *r = e % rows;
    *k = e / rows;
  }
}

enum Product : int { kForward = 0, kGradInput = 1, kGradWeight = 2 };

// C[m, n] = sum_k A(m, k) B(n, k) on degree-sorted operands, one of
//   kForward     y_s[b, o]  = act(sum_i x_s[b, i] (W_s*M)[o, i] + bias_s[o])  m = b, n = o, k = i
//   kGradInput   dx_s[b, i] = sum_o g[b, o] (W_s*M)[o, i]                      m = b, n = i, k = o
//   kGradWeight  dW_s[o, i] = M[o, i] * sum_b g[b, o] x_s[b, i]                m = o, n = i, k = b
// (g: d loss / d pre-activation). The mask sits on B for the first two, on C
// for the third; no [out, in] mask exists anywhere.
template <typename T>
struct MaskedProduct {
  int product;
  int64_t M, N, K;
  const T* a;
  int64_t a_rs, a_ks;  // A(m, k) = a[m * a_rs + k * a_ks]
  const T* b;
  int64_t b_rs, b_ks;  // B(n, k) = b[n * b_rs + k * b_ks]
  const T* bias;       // [N] for kForward, or nullptr
  const int64_t* out_sorted;
  const int64_t* in_sorted;
  bool strict;
  int64_t act;

  // Kind of the B tile [n0, n1) x [k0, k1) (all ones when B carries no mask).
  AF_HD TileKind b_tile(int64_t n0, int64_t n1, int64_t k0, int64_t k1) const {
    if (product == kForward) return classify_tile(out_sorted, n0, n1, in_sorted, k0, k1, strict);
    if (product == kGradInput) return classify_tile(out_sorted, k0, k1, in_sorted, n0, n1, strict);
    return kTileOnes;
  }

  // Kind of the C tile [m0, m1) x [n0, n1): a zero tile is written without a k loop.
  AF_HD TileKind c_tile(int64_t m0, int64_t m1, int64_t n0, int64_t n1) const {
    return product == kGradWeight ? classify_tile(out_sorted, m0, m1, in_sorted, n0, n1, strict) : kTileOnes;
  }

  // [k_begin, k_end) outside which B is zero for the columns [n0, n1); k_begin on a
  // multiple of kTileK. Forward: inputs the last (highest) output reaches; dx:
  // outputs from the first one the smallest input reaches.
  AF_HD void k_range(int64_t n0, int64_t n1, int64_t* k_begin, int64_t* k_end) const {
    int64_t kb = 0, ke = K;
    if (product == kForward) ke = reach(in_sorted, K, out_sorted[n1 - 1], strict);
    if (product == kGradInput) kb = first_reaching(out_sorted, K, in_sorted[n0], strict);
    *k_begin = kb / kTileK * kTileK;
    *k_end = ke;
  }

  AF_HD T load_a(int64_t m, int64_t k) const { return m < M && k < K ? a[m * a_rs + k * a_ks] : T(0); }

  // B(n, k) masked as a `kind` tile (zero outside the matrix).
  AF_HD T load_b(TileKind kind, int64_t n, int64_t k) const {
    if (n >= N || k >= K) return T(0);
    const T v = b[n * b_rs + k * b_ks];
    if (kind == kTileOnes) return v;
    const bool on = product == kForward ? tile_connected(kind, out_sorted[n], in_sorted[k], strict)
                                        : tile_connected(kind, out_sorted[k], in_sorted[n], strict);
    return on ? v : T(0);
  }

  // C[m, n] from the accumulated sum (c_kind: the C tile's kind).
  AF_HD T epilogue(TileKind c_kind, int64_t m, int64_t n, T acc) const {
    if (product == kForward) return activate(bias != nullptr ? acc + bias[n] : acc, act);
    if (product == kGradWeight) return tile_connected(c_kind, out_sorted[m], in_sorted[n], strict) ? acc : T(0);
    return acc;
  }
};

// The product `which` of a layer with B rows, O outputs, I inputs, on contiguous
// row-major x_s [B, I], W_s [O, I], g [B, O]:
//   kForward: a = x_s, b = W_s, bias = bias_s or nullptr;  kGradInput: a = g, b = W_s;
//   kGradWeight: a = g, b = x_s. C is [M, N] row-major.
template <typename T>
AF_HD inline MaskedProduct<T> masked_product(int which, int64_t B, int64_t O, int64_t I, const T* a, const T* b,
                                             const T* bias, const int64_t* in_sorted, const int64_t* out_sorted,
                                             bool strict, int64_t act) {
  MaskedProduct<T> q{};
  q.product = which;
  q.a = a;
  q.b = b;
  q.bias = which == kForward ? bias : nullptr;
  q.out_sorted = out_sorted;
  q.in_sorted = in_sorted;
  q.strict = strict;
  q.act = act;
  if (which == kForward) {  // A(m=b, k=i) = x_s[b, i], B(n=o, k=i) = W_s[o, i]
    q.M = B, q.N = O, q.K = I;
    q.a_rs = I, q.a_ks = 1, q.b_rs = I, q.b_ks = 1;
  } else if (which == kGradInput) {  // A(m=b, k=o) = g[b, o], B(n=i, k=o) = W_s[o, i]
    q.M = B, q.N = I, q.K = O;
    q.a_rs = O, q.a_ks = 1, q.b_rs = 1, q.b_ks = I;
  } else {  // A(m=o, k=b) = g[b, o], B(n=i, k=b) = x_s[b, i]
    q.M = O, q.N = I, q.K = B;
    q.a_rs = 1, q.a_ks = O, q.b_rs = 1, q.b_ks = I;
  }
  return q;
}

// d loss / d pre-activation from d loss / d y and y = act(pre).
template <typename T>
AF_HD inline T pre_activation_grad(T grad_y, T y, int64_t act) {
  return act == kNone ? grad_y : grad_y * activation_grad_from_output(y, act);
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
