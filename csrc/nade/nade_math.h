// Per-row math of NADE and its output heads (docs/DESIGN.md section 2), torch-free.
//
// Everything here is a small inline function marked AF_HD so that the C++ CPU
// kernels (nade_cpu.cpp, nade_variants_cpu.cpp) and a CUDA kernel include the
// same code: the CPU tests therefore exercise the math the GPU runs.
//
// The heads reproduce armodel_fast/reference/heads.py sample for sample:
//   Bernoulli    x = 1{u < sigmoid(l)}
//   categorical  x = #{k < K-1 : cdf_k <= u}, cdf_k = p_0 + ... + p_k
//   mixture      k by the categorical rule on u0, x = mu_k + exp(ls_k) * ndtri(clamp(u1))
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define AF_HD __host__ __device__
#define AF_FI __forceinline__
#else
#define AF_HD
#define AF_FI inline __attribute__((always_inline))
#endif

namespace af {
namespace nade {

#ifndef __CUDACC__
using std::exp;
using std::fabs;
using std::log;
using std::log1p;
using std::sqrt;
#endif

constexpr double kLogSqrt2Pi = 0.91893853320467274178;  // 0.5 * log(2 pi)
constexpr double kUniformEps = 1e-6;                    // heads.U_EPS

// The carried s = exp(-a) of the binary kernel is exact only while |a| <= kClamp:
// beyond that sigmoid(a) is 0 or 1 to working precision, and s is recomputed
// from exp(-clamp(a)). exp(2 * kClamp) must stay finite in T.
template <typename T> struct Limits;
// kExpLo / kExpHi = exp(-kClamp) / exp(kClamp).
template <> struct Limits<float> {
  static constexpr float kClamp = 40.0f;
  static constexpr float kExpLo = 4.24835425529158899e-18f;
  static constexpr float kExpHi = 2.35385266837019985e17f;
};
template <> struct Limits<double> {
  static constexpr double kClamp = 300.0;
  static constexpr double kExpLo = 5.14820022241002809e-131;
  static constexpr double kExpHi = 1.94242639524111578e130;
};

template <typename T> AF_HD AF_FI T clamp(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }
template <typename T> AF_HD AF_FI T max2(T a, T b) { return a > b ? a : b; }

AF_HD AF_FI float bits_to_float(int32_t i) {
#ifdef __CUDA_ARCH__
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

// exp(x) for float with ~1 ulp error, written with plain arithmetic so loops
// that call it vectorise (Cephes expf: range reduction by ln 2, degree-6
// polynomial, scale by 2^n built from the exponent bits). Input clamped to
// [-87, 88]: results saturate at about 1.6e-38 and 1.7e38 instead of 0 / inf.
AF_HD AF_FI float exp_poly(float x) {
  x = clamp(x, -87.0f, 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: (v + magic) - magic rounds v to an integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// Vectorisable exp used inside the hidden-unit loops (float: exp_poly; double: libm).
AF_HD AF_FI float vexp(float x) { return exp_poly(x); }
AF_HD AF_FI double vexp(double x) { return exp(x); }

// sigmoid of a hidden pre-activation inside a loop over H: 1 / (1 + exp(-a)).
template <typename T> AF_HD AF_FI T hidden_sigmoid(T a) { return T(1) / (T(1) + vexp(-a)); }

// ---- scalar, precise (libm) functions for the per-step outputs ----

template <typename T> AF_HD AF_FI T sigmoid(T l) {
  // torch.sigmoid's formula, 1 / (1 + exp(-l)); exact limits 0 and 1 for large |l|.
  return T(1) / (T(1) + exp(-l));
}

// log(1 + exp(l)) without overflow or cancellation.
template <typename T> AF_HD AF_FI T softplus(T l) { return max2(l, T(0)) + log1p(exp(-fabs(l))); }

template <typename T> AF_HD AF_FI T log_sigmoid(T l) { return -softplus(-l); }

// log p(x | logit) of a Bernoulli, x in {0, 1}: x*l - softplus(l).
template <typename T> AF_HD AF_FI T bernoulli_log_prob(T l, T x) { return x * l - softplus(l); }

// d log p / d l = x - sigmoid(l).
template <typename T> AF_HD AF_FI T bernoulli_dlogit(T l, T x) { return x - sigmoid(l); }

template <typename T> AF_HD AF_FI T bernoulli_draw(T l, T u) { return u < sigmoid(l) ? T(1) : T(0); }

// ---- categorical head over K logits (contiguous) ----

template <typename T> AF_HD AF_FI T max_of(const T* l, int64_t K) {
  T m = l[0];
  for (int64_t k = 1; k < K; ++k) m = max2(m, l[k]);
  return m;
}

template <typename T> AF_HD AF_FI T logsumexp(const T* l, int64_t K) {
  const T m = max_of(l, K);
  T s = 0;
  for (int64_t k = 0; k < K; ++k) s += exp(l[k] - m);
  return m + log(s);
}

template <typename T> AF_HD AF_FI T categorical_log_prob(const T* l, int64_t K, int64_t x) {
  return l[x] - logsumexp(l, K);
}

// Inverse-CDF draw: the number of k < K-1 with cdf_k <= u (heads.categorical_sample).
template <typename T> AF_HD AF_FI int64_t categorical_draw(const T* l, int64_t K, T u) {
  const T m = max_of(l, K);
  T s = 0;
  for (int64_t k = 0; k < K; ++k) s += exp(l[k] - m);
  T cdf = 0;
  int64_t n = 0;
  for (int64_t k = 0; k + 1 < K; ++k) {
    cdf += exp(l[k] - m) / s;
    n += (cdf <= u) ? 1 : 0;
  }
  return n;
}

// g[k] += G * (1{k == x} - softmax(l)_k): the gradient of G * log p(x) w.r.t. the logits.
template <typename T> AF_HD AF_FI void categorical_grad(const T* l, int64_t K, int64_t x, T G, T* g) {
  const T lse = logsumexp(l, K);
  for (int64_t k = 0; k < K; ++k) g[k] += G * ((k == x ? T(1) : T(0)) - exp(l[k] - lse));
}

// ---- mixture of K Gaussians: logits, means, log-scales (each K contiguous) ----

template <typename T> AF_HD AF_FI T mixture_term(T logit, T lse_pi, T mu, T ls, T x, T* z_out) {
  const T z = (x - mu) * exp(-ls);
  if (z_out) *z_out = z;
  return (logit - lse_pi) + (T(-0.5) * z * z - ls - T(kLogSqrt2Pi));
}

template <typename T>
AF_HD AF_FI T mixture_log_prob(const T* logit, const T* mu, const T* ls, int64_t K, T x) {
  const T lse_pi = logsumexp(logit, K);
  T m = -INFINITY;
  for (int64_t k = 0; k < K; ++k) {
    const T t = mixture_term(logit[k], lse_pi, mu[k], ls[k], x, (T*)nullptr);
    m = (t > m || t != t) ? t : m;  // a NaN term (e.g. x = inf, sigma = inf) stays NaN, as in torch.logsumexp
  }
  if (!(m > -INFINITY)) return m;
  T s = 0;
  for (int64_t k = 0; k < K; ++k) s += exp(mixture_term(logit[k], lse_pi, mu[k], ls[k], x, (T*)nullptr) - m);
  return m + log(s);
}

// Adds G * d log p(x) / d(logit, mu, ls) to g_logit, g_mu, g_ls; returns G * d log p / dx.
// With r_k the posterior responsibility and z_k = (x - mu_k) / sigma_k:
//   d/dlogit_k = r_k - pi_k,  d/dmu_k = r_k z_k / sigma_k,  d/dls_k = r_k (z_k^2 - 1),
//   d/dx = -sum_k r_k z_k / sigma_k.
template <typename T>
AF_HD AF_FI T mixture_grad(const T* logit, const T* mu, const T* ls, int64_t K, T x, T G, T* g_logit,
                           T* g_mu, T* g_ls) {
  const T lp = mixture_log_prob(logit, mu, ls, K, x);
  const T lse_pi = logsumexp(logit, K);
  T dx = 0;
  for (int64_t k = 0; k < K; ++k) {
    T z;
    const T term = mixture_term(logit[k], lse_pi, mu[k], ls[k], x, &z);
    const T r = exp(term - lp);
    g_logit[k] += G * (r - exp(logit[k] - lse_pi));
    if (r == T(0)) continue;  // no responsibility: no mean / scale gradient (avoids 0 * inf)
    const T inv_sigma = exp(-ls[k]);
    g_mu[k] += G * r * z * inv_sigma;
    g_ls[k] += G * r * (z * z - T(1));
    dx -= r * z * inv_sigma;
  }
  return G * dx;
}

// ---- inverse standard normal CDF (Cephes ndtri, double precision) ----

AF_HD AF_FI double polevl(double x, const double* c, int n) {
  double a = c[0];
  for (int i = 1; i <= n; ++i) a = a * x + c[i];
  return a;
}

AF_HD AF_FI double p1evl(double x, const double* c, int n) {
  double a = x + c[0];
  for (int i = 1; i < n; ++i) a = a * x + c[i];
  return a;
}

AF_HD inline double ndtri(double y0) {
  const double P0[5] = {-5.99633501014107895267E1, 9.80010754185999661536E1, -5.66762857469070293439E1,
                        1.39312609387279679503E1, -1.23916583867381258016E0};
  const double Q0[8] = {1.95448858338141759834E0,  4.67627912898881538453E0,  8.63602421390890590575E1,
                        -2.25462687854119370527E2, 2.00260212380060660359E2,  -8.20372256168333339912E1,
                        1.59056225126211695515E1,  -1.18331621121330003142E0};
  const double P1[9] = {4.05544892305962419923E0,   3.15251094599893866154E1,  5.71628192246421288162E1,
                        4.40805073893200834700E1,   1.46849561928858024014E1,  2.18663306850790267539E0,
                        -1.40256079171354495875E-1, -3.50424626827848203418E-2, -8.57456785154685413611E-4};
  const double Q1[8] = {1.57799883256466749731E1,   4.53907635128879210584E1,   4.13172038254672030440E1,
                        1.50425385692907503408E1,   2.50464946208309415979E0,   -1.42182922854787788574E-1,
                        -3.80806407691578277194E-2, -9.33259480895457427372E-4};
  const double P2[9] = {3.23774891776946035970E0,  6.91522889068984211695E0,  3.93881025292474443415E0,
                        1.33303460815807542389E0,  2.01485389549179081538E-1, 1.23716634817820021358E-2,
                        3.01581553508235416007E-4, 2.65806974686737550832E-6, 6.23974539184983293730E-9};
  const double Q2[8] = {6.02427039364742014255E0,  3.67983563856160859403E0,  1.37702099489081330271E0,
                        2.16236993594496635890E-1, 1.34204006088543189037E-2, 3.28014464682127739104E-4,
                        2.89247864745380683936E-6, 6.79019408009981274425E-9};
  const double s2pi = 2.50662827463100050242E0;
  const double expm2 = 0.13533528323661269189;  // exp(-2)
  if (y0 <= 0.0) return -INFINITY;
  if (y0 >= 1.0) return INFINITY;
  bool negate = true;
  double y = y0;
  if (y > 1.0 - expm2) {
    y = 1.0 - y;
    negate = false;
  }
  if (y > expm2) {
    y -= 0.5;
    const double y2 = y * y;
    return (y + y * (y2 * polevl(y2, P0, 4) / p1evl(y2, Q0, 8))) * s2pi;
  }
  const double x = sqrt(-2.0 * log(y));
  const double x0 = x - log(x) / x;
  const double z = 1.0 / x;
  const double x1 = x < 8.0 ? z * polevl(z, P1, 8) / p1evl(z, Q1, 8) : z * polevl(z, P2, 8) / p1evl(z, Q2, 8);
  const double r = x0 - x1;
  return negate ? -r : r;
}

// Mixture draw from u0 (component) and u1 (Gaussian quantile), as heads.gaussian_mixture_sample.
template <typename T>
AF_HD AF_FI T mixture_draw(const T* logit, const T* mu, const T* ls, int64_t K, T u0, T u1) {
  const int64_t k = categorical_draw(logit, K, u0);
  const T uc = clamp(u1, T(kUniformEps), T(1.0 - kUniformEps));
  const T z = static_cast<T>(ndtri(static_cast<double>(uc)));
  return mu[k] + exp(ls[k]) * z;
}

}  // namespace nade
}  // namespace af
