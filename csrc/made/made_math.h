// Per-step pieces of the one-pass MADE / FVSBN sampler (docs/DESIGN.md section 4),
// shared by the C++ CPU sampler (made_cpu.cpp) and the CUDA one (made_cuda.cu)
// so that the CPU tests exercise the code the GPU runs: which units a layer
// computes at step t, and the output head's draw for one sample.
//
// Torch-free and AF_HD (host + device).
#pragma once

#include <cmath>
#include <cstdint>

#include "masked_linear/masked_linear_math.h"

namespace af {
namespace made {

// kAffine / kAffineRaw: the K=1 Gaussian flow's inverse with a soft-clipped / raw log sigma.
enum Head : int64_t { kBernoulli = 0, kCategorical = 1, kGaussian = 2, kAffine = 3, kAffineRaw = 4 };

// Bound on the affine head's |log sigma| (reference/made.py LOG_SCALE_BOUND = log(1e3)).
constexpr double kLogScaleBound = 6.907755278982137;

AF_HD inline bool is_affine(int64_t head) { return head == kAffine || head == kAffineRaw; }

// log sigma of the affine heads: raw / (1 + |raw| / bound) (kAffine), raw (kAffineRaw);
// reference/made.py bounded_log_sigma.
template <typename T>
AF_HD inline T affine_log_sigma(int64_t head, T raw) {
  return head == kAffine ? raw / (T(1) + T(std::fabs(raw)) / T(kLogScaleBound)) : raw;
}

constexpr int kMaxLayers = 64;  // hidden layers + the output layer (reference/made.py MAX_HIDDEN_LAYERS + 1)

// A hidden layer's program (reference/made.py ACT_OUT, ACT_IN, SKIP): its output goes
// through the activation; it reads the activation of the layer before it (a pre-activation
// residual block); it adds the output of layer l-2 (the block's input), unit for unit.
enum LayerFlag : int64_t { kActOut = 1, kActIn = 2, kSkip = 4 };

// The sampler's operands (pointers into contiguous tensors of the compute type T,
// int64 degrees/order), filled and checked by made_glue.h: degree-sorted weights
// and biases of the L hidden layers and the output layer (w[L] / b[L]: rows
// [t*P, (t+1)*P) are dimension order[t]), sorted hidden degrees, the sorted
// direct weight [D*P, D*Kin] or null, the sorted context terms or null, the noise.
struct Operands {
  int64_t n, D, L, P, Kin, K, head, activation;
  const void* w[kMaxLayers];
  const void* b[kMaxLayers];
  const int64_t* deg[kMaxLayers];  // L sorted degree vectors
  int64_t ldw[kMaxLayers];         // row stride of w[l]
  int64_t units[kMaxLayers];       // rows of w[l]
  int64_t flags[kMaxLayers];       // LayerFlag bits of hidden layer l
  const void* direct;
  int64_t ld_direct;
  const int64_t* order;  // [D]
  const void* ctx_h;     // [n, units[0]] or null
  const void* ctx_o;     // [n, D * P] or null
  const void* noise;     // u [n, D] or [n, D, 2], or z [n, D] (affine)
  const void* z;         // Phi^-1(clamped u[..., 1]) [n, D] (gaussian), else null
};

// Parameters per output dimension (P) and inputs per dimension (Kin: one-hot for categorical).
// The affine heads have 2: mu, raw log sigma (no mixture logit); the mixture 3K: logits, mu, log sigma.
AF_HD inline int64_t params_per_dim(int64_t head, int64_t K) {
  return head == kBernoulli ? 1 : (head == kCategorical ? K : (is_affine(head) ? 2 : 3 * K));
}
AF_HD inline int64_t inputs_per_dim(int64_t head, int64_t K) { return head == kCategorical ? K : 1; }

// Whether hidden layer l's consumer (layer l+1) reads act(layer l): the samplers then keep an
// activated copy of layer l's units.
AF_HD inline bool copy_activated(const Operands& op, int64_t l) { return l + 1 < op.L && (op.flags[l + 1] & kActIn); }

// A layer's units sorted by degree: those of degree <= t are [0, end). The run
// computed at step t is [begin, run_end(...)), where begin is the previous end:
// a unit of degree m reads the inputs of degree <= m, drawn at steps 0..m-1.
AF_HD inline int64_t run_end(const int64_t* sorted_degrees, int64_t units, int64_t begin, int64_t t) {
  int64_t end = begin;
  while (end < units && sorted_degrees[end] <= t) ++end;
  return end;
}

// The head's draw for one sample from its P output parameters p[0], p[stride], ...
// (the rules of reference/heads.py). noise points at this sample's u (or z for
// the affine heads; u[0], u[1] for kGaussian), z at Phi^-1(clamped u[1]) (kGaussian only).
// Writes the drawn value (*x, or the class *xi) and returns the log-likelihood
// term (log p(x_d | x_<d), or the affine heads' log sigma_d: its log|dx/dz|).
template <typename T>
AF_HD inline T draw(int64_t head, const T* p, int64_t stride, int64_t K, const T* noise, T z, T* x, int64_t* xi) {
  if (head == kBernoulli) {
    *x = ml::bernoulli_draw(p[0], noise[0]);
    return ml::bernoulli_log_prob(p[0], *x);
  }
  if (head == kCategorical) {
    *xi = ml::categorical_draw(p, stride, K, noise[0]);
    return ml::categorical_log_prob(p, stride, K, *xi);
  }
  if (head == kGaussian) {
    *x = ml::gaussian_mixture_draw(p, stride, K, noise[0], z);
    return ml::gaussian_mixture_log_prob(p, stride, K, *x);
  }
  // affine inverse of a K=1 Gaussian: x = mu + exp(s) z, s the (bounded) log sigma; p = (mu, raw log sigma)
  const T s = affine_log_sigma(head, p[stride]);
  *x = p[0] + T(std::exp(s)) * noise[0];
  return s;
}

}  // namespace made
}  // namespace af
