// MADE / FVSBN sampling in O(parameters), one call for all D steps (DESIGN.md section 4).
//
// A hidden unit of degree m depends only on the inputs of degree <= m, i.e. on
// the dimensions drawn at steps 0..m-1. At step t every layer computes only its
// units of degree exactly t (their inputs are all known by then), and the
// output rows of dimension order[t] read the last layer's units of degree <= t
// (strict mask). Every hidden unit is computed once per sample, so drawing all
// D dimensions costs about one forward pass instead of D.
//
// Inputs are the degree-sorted masked weights of masked_linear_prepare: in
// layer l the units of degree t are a contiguous run of sorted rows and each
// reads a prefix of the previous layer's sorted units. Activations are kept
// unit-major, `NS` samples side by side ([units][NS]), so each weight is
// loaded once per chunk of NS samples and feeds NS multiply-adds; chunks run
// in parallel. The head rules (masked_linear_math.h) match reference/heads.py,
// so given the same uniforms the samples equal the D-pass reference sampler's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "masked_linear_math.h"
#include "ops.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define AF_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AF_SIMD_CLONES
#endif

namespace af {
namespace {

enum Head : int64_t { kBernoulli = 0, kCategorical = 1, kGaussian = 2, kAffine = 3 };

// out[k][s] = sum_{j < c} W[k, j] * H[j][s] for k < rows, s < NS. The NS lanes
// are one GCC/Clang vector (split into as many registers as the ISA needs) and U
// independent partial sums hide the add latency. Compiled for AVX-512, AVX2 and
// the baseline; the loader picks the widest the CPU has.
template <typename T, int NS>
AF_SIMD_CLONES void rows_dot(const T* __restrict W, int64_t ldw, int64_t rows, int64_t c, const T* __restrict H,
                             T* __restrict out) {
  typedef T vec __attribute__((vector_size(8 * sizeof(T))));  // 8 lanes: 1 AVX2 / half an AVX-512 register
  constexpr int V = NS / 8;                                  // vectors per row of H
  constexpr int U = V >= 4 ? 2 : 4;                           // independent partial sums
  static_assert(NS % 8 == 0, "NS must be a multiple of 8");
  // Unaligned vector loads by memcpy (no vector-returning helper: that would
  // change the ABI between the clones, -Wpsabi).
#define AF_FMA_ROW(ACC, WJ, PTR)                  \
  for (int v = 0; v < V; ++v) {                   \
    vec h_;                                       \
    __builtin_memcpy(&h_, (PTR) + 8 * v, sizeof(vec)); \
    ACC[v] += (WJ) * h_;                          \
  }
  for (int64_t k = 0; k < rows; ++k) {
    const T* w = W + k * ldw;
    vec acc[U][V] = {};
    int64_t j = 0;
    for (; j + U <= c; j += U) {
      for (int u = 0; u < U; ++u) AF_FMA_ROW(acc[u], w[j + u], H + (j + u) * NS)
    }
    for (; j < c; ++j) AF_FMA_ROW(acc[0], w[j], H + j * NS)
    for (int v = 0; v < V; ++v) {
      for (int u = 1; u < U; ++u) acc[0][v] += acc[u][v];
      __builtin_memcpy(out + k * NS + 8 * v, &acc[0][v], sizeof(vec));
    }
  }
#undef AF_FMA_ROW
}

struct Problem {
  int64_t n, D, L, P, Kin, K, head, activation;
  std::vector<const void*> w, b, deg;  // L + 1 weights/biases, L sorted degree vectors
  std::vector<int64_t> ldw, units;     // row stride and number of units per layer (L + 1)
  const void* direct = nullptr;
  int64_t ld_direct = 0;
  const int64_t* order;
  const void* ctx_h = nullptr;  // [n, units[0]]
  const void* ctx_o = nullptr;  // [n, D * P]
  const void* noise;            // u [n, D] or [n, D, 2], or z [n, D] (affine)
  const void* z = nullptr;      // Phi^-1(u[..., 1]) [n, D] (gaussian)
};

template <typename T, int NS>
void sample_chunk(const Problem& pb, int64_t s0, int64_t ns, T* x_out, int64_t* xi_out, T* lp_out) {
  const int64_t D = pb.D, L = pb.L, P = pb.P, Kin = pb.Kin, K = pb.K;
  std::vector<T> X(static_cast<size_t>(D * Kin * NS), T(0));
  std::vector<std::vector<T>> Hs(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) Hs[l].assign(static_cast<size_t>(pb.units[l] * NS), T(0));
  std::vector<T> acc(static_cast<size_t>(P * NS)), tmp(static_cast<size_t>(P * NS));
  std::vector<int64_t> cursor(static_cast<size_t>(L), 0);
  T lp[NS] = {};
  const T* noise = static_cast<const T*>(pb.noise);
  const T* zs = static_cast<const T*>(pb.z);

  for (int64_t t = 0; t < D; ++t) {
    const T* prev = X.data();
    int64_t prev_count = t * Kin;  // inputs of degree <= t: the dimensions of steps < t
    for (int64_t l = 0; l < L; ++l) {
      const int64_t* deg = static_cast<const int64_t*>(pb.deg[l]);
      const int64_t begin = cursor[l];
      int64_t end = begin;
      while (end < pb.units[l] && deg[end] <= t) ++end;
      if (end > begin) {
        T* h = Hs[l].data() + begin * NS;
        rows_dot<T, NS>(static_cast<const T*>(pb.w[l]) + begin * pb.ldw[l], pb.ldw[l], end - begin, prev_count,
                        prev, h);
        const T* bias = static_cast<const T*>(pb.b[l]);
        const T* ctx = l == 0 ? static_cast<const T*>(pb.ctx_h) : nullptr;
        for (int64_t k = begin; k < end; ++k) {
          for (int64_t s = 0; s < NS; ++s) {
            T v = h[(k - begin) * NS + s] + bias[k];
            if (ctx && s < ns) v += ctx[(s0 + s) * pb.units[0] + k];
            h[(k - begin) * NS + s] = ml::activate(v, pb.activation);
          }
        }
      }
      cursor[l] = end;
      prev = Hs[l].data();
      prev_count = end;
    }
    // Output rows of dimension order[t]: sorted rows [t*P, (t+1)*P).
    const int64_t row = t * P;
    // Same association as the reference: ((W h + b) + direct) + context.
    rows_dot<T, NS>(static_cast<const T*>(pb.w[L]) + row * pb.ldw[L], pb.ldw[L], P, prev_count, prev, acc.data());
    const T* bias = static_cast<const T*>(pb.b[L]);
    for (int64_t j = 0; j < P; ++j) {
      for (int64_t s = 0; s < NS; ++s) acc[j * NS + s] += bias[row + j];
    }
    if (pb.direct) {
      rows_dot<T, NS>(static_cast<const T*>(pb.direct) + row * pb.ld_direct, pb.ld_direct, P, t * Kin, X.data(),
                      tmp.data());
      for (int64_t i = 0; i < P * NS; ++i) acc[i] += tmp[i];
    }
    if (const T* ctx = static_cast<const T*>(pb.ctx_o)) {
      for (int64_t j = 0; j < P; ++j) {
        for (int64_t s = 0; s < ns; ++s) acc[j * NS + s] += ctx[(s0 + s) * D * P + row + j];
      }
    }
    const int64_t d = pb.order[t];
    for (int64_t s = 0; s < ns; ++s) {
      const T* p = acc.data() + s;
      const int64_t nd = (s0 + s) * D + d;
      if (pb.head == kBernoulli) {
        const T xv = ml::bernoulli_draw(p[0], noise[nd]);
        lp[s] += ml::bernoulli_log_prob(p[0], xv);
        X[t * NS + s] = xv;
        x_out[nd] = xv;
      } else if (pb.head == kCategorical) {
        const int64_t xv = ml::categorical_draw(p, NS, K, noise[nd]);
        lp[s] += ml::categorical_log_prob(p, NS, K, xv);
        X[(t * K + xv) * NS + s] = T(1);
        xi_out[nd] = xv;
      } else if (pb.head == kGaussian) {
        const T xv = ml::gaussian_mixture_draw(p, NS, K, noise[2 * nd], zs[nd]);
        lp[s] += ml::gaussian_mixture_log_prob(p, NS, K, xv);
        X[t * NS + s] = xv;
        x_out[nd] = xv;
      } else {  // affine inverse: x = mu + exp(log_sigma) z, log|dx/dz| += log_sigma
        const T xv = p[NS] + std::exp(p[2 * NS]) * noise[nd];
        lp[s] += p[2 * NS];
        X[t * NS + s] = xv;
        x_out[nd] = xv;
      }
    }
  }
  for (int64_t s = 0; s < ns; ++s) lp_out[s0 + s] = lp[s];
}

template <typename T, int NS>
void run_chunks(const Problem& pb, T* x_out, int64_t* xi_out, T* lp_out) {
  const int64_t chunks = (pb.n + NS - 1) / NS;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s0 = c * NS;
      sample_chunk<T, NS>(pb, s0, std::min<int64_t>(NS, pb.n - s0), x_out, xi_out, lp_out);
    }
  });
}

void check_matrix(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t rows, int64_t cols) {
  check_float_tensor(t, name, 2);
  check_contiguous(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_VALUE((rows < 0 || t.size(0) == rows) && (cols < 0 || t.size(1) == cols), name, " must have shape [",
                    rows, ", ", cols, "], got ", t.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> made_sample(const std::vector<at::Tensor>& weights,
                                               const std::vector<at::Tensor>& biases,
                                               const std::vector<at::Tensor>& degrees,
                                               const std::optional<at::Tensor>& direct, const at::Tensor& order,
                                               const std::optional<at::Tensor>& ctx_hidden,
                                               const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise,
                                               int64_t head, int64_t K, int64_t activation) {
  TORCH_CHECK_VALUE(!weights.empty(), "weights must hold the output layer at least");
  const int64_t L = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(biases.size()) == L + 1, "biases must have one entry per layer");
  TORCH_CHECK_VALUE(static_cast<int64_t>(degrees.size()) == L, "degrees must have one entry per hidden layer");
  TORCH_CHECK_VALUE(head >= kBernoulli && head <= kAffine, "head must be 0..3, got ", head);
  TORCH_CHECK_VALUE(activation >= ml::kNone && activation <= ml::kTanh, "activation must be 0..3, got ", activation);
  check_float_tensor(noise, "noise");
  const auto dtype = noise.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "noise must be float32 or float64, got ", dtype);
  TORCH_CHECK_VALUE(noise.dim() == (head == kGaussian ? 3 : 2) && (head != kGaussian || noise.size(2) == 2),
                    "noise must have shape [n, D]", head == kGaussian ? "[, 2]" : "", ", got ", noise.sizes());
  const int64_t n = noise.size(0), D = noise.size(1);
  check_order(order, D, "order");
  TORCH_CHECK_VALUE(head != kCategorical || K >= 2, "K must be >= 2 for a categorical head");
  TORCH_CHECK_VALUE(head == kCategorical || head == kBernoulli || K >= 1, "K must be >= 1");

  Problem pb;
  pb.n = n, pb.D = D, pb.L = L, pb.head = head, pb.activation = activation;
  pb.K = head == kBernoulli ? 1 : (head == kAffine ? 1 : K);
  pb.P = head == kBernoulli ? 1 : (head == kCategorical ? K : 3 * pb.K);
  pb.Kin = head == kCategorical ? K : 1;
  int64_t in_units = D * pb.Kin;
  for (int64_t l = 0; l <= L; ++l) {
    const int64_t rows = l < L ? degrees[l].numel() : D * pb.P;
    check_matrix(weights[l], "weights[l]", dtype, rows, in_units);
    check_float_tensor(biases[l], "biases[l]", 1);
    check_contiguous(biases[l], "biases[l]");
    TORCH_CHECK_VALUE(biases[l].numel() == rows && biases[l].scalar_type() == dtype,
                      "biases[l] must be a [", rows, "] tensor of the weights' dtype");
    if (l < L) {
      TORCH_CHECK_TYPE(degrees[l].scalar_type() == at::kLong, "degrees[l] must be int64");
      check_contiguous(degrees[l], "degrees[l]");
      pb.deg.push_back(degrees[l].const_data_ptr());
    }
    pb.w.push_back(weights[l].const_data_ptr());
    pb.b.push_back(biases[l].const_data_ptr());
    pb.ldw.push_back(weights[l].stride(0));
    pb.units.push_back(rows);
    in_units = rows;
  }
  if (direct.has_value() && direct->defined()) {
    check_matrix(*direct, "direct", dtype, D * pb.P, D * pb.Kin);
    pb.direct = direct->const_data_ptr();
    pb.ld_direct = direct->stride(0);
  }
  if (ctx_hidden.has_value() && ctx_hidden->defined()) {
    TORCH_CHECK_VALUE(L > 0, "ctx_hidden needs a hidden layer");
    check_matrix(*ctx_hidden, "ctx_hidden", dtype, n, pb.units[0]);
    pb.ctx_h = ctx_hidden->const_data_ptr();
  }
  if (ctx_out.has_value() && ctx_out->defined()) {
    check_matrix(*ctx_out, "ctx_out", dtype, n, D * pb.P);
    pb.ctx_o = ctx_out->const_data_ptr();
  }
  const at::Tensor order_c = order.contiguous();
  pb.order = order_c.const_data_ptr<int64_t>();
  const at::Tensor noise_c = noise.contiguous();
  pb.noise = noise_c.const_data_ptr();
  at::Tensor z;
  if (head == kGaussian) {  // z = Phi^-1(u[..., 1]) exactly as the reference computes it
    z = at::special_ndtri(noise_c.select(2, 1).clamp(1e-6, 1 - 1e-6)).contiguous();
    pb.z = z.const_data_ptr();
  }

  const bool categorical = head == kCategorical;
  at::Tensor x = at::zeros({n, D}, noise.options().dtype(categorical ? at::kLong : dtype));
  at::Tensor lp = at::zeros({n}, noise.options());
  const bool wide = n >= 32 * at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(dtype, "made_sample", [&] {
    scalar_t* xo = categorical ? nullptr : x.mutable_data_ptr<scalar_t>();
    int64_t* xi = categorical ? x.mutable_data_ptr<int64_t>() : nullptr;
    if (wide) {
      run_chunks<scalar_t, 32>(pb, xo, xi, lp.mutable_data_ptr<scalar_t>());
    } else {
      run_chunks<scalar_t, 8>(pb, xo, xi, lp.mutable_data_ptr<scalar_t>());
    }
  });
  return {x, lp};
}

}  // namespace af
