// MADE / FVSBN sampling in O(parameters), one call for all D steps (docs/DESIGN.md section 4).
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
// in parallel. The head rules (masked_linear/masked_linear_math.h) match reference/heads.py,
// so given the same uniforms the samples equal the D-pass reference sampler's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "made/made_glue.h"
#include "made/made_math.h"
#include "masked_linear/masked_linear_math.h"
#include "common/ops.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define AF_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AF_SIMD_CLONES
#endif

namespace af {
namespace {

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

template <typename T, int NS>
void sample_chunk(const made::Operands& pb, int64_t s0, int64_t ns, T* x_out, int64_t* xi_out, T* lp_out) {
  const int64_t D = pb.D, L = pb.L, P = pb.P, Kin = pb.Kin, K = pb.K;
  std::vector<T> X(static_cast<size_t>(D * Kin * NS), T(0));
  std::vector<std::vector<T>> Hs(static_cast<size_t>(L));
  std::vector<std::vector<T>> As(static_cast<size_t>(L));  // act(layer l) where layer l+1 reads it (ACT_IN)
  for (int64_t l = 0; l < L; ++l) {
    Hs[l].assign(static_cast<size_t>(pb.units[l] * NS), T(0));
    if (made::copy_activated(pb, l)) As[l].assign(static_cast<size_t>(pb.units[l] * NS), T(0));
  }
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
      const int64_t end = made::run_end(deg, pb.units[l], begin, t);
      if (end > begin) {
        T* h = Hs[l].data() + begin * NS;
        rows_dot<T, NS>(static_cast<const T*>(pb.w[l]) + begin * pb.ldw[l], pb.ldw[l], end - begin, prev_count,
                        prev, h);
        const T* bias = static_cast<const T*>(pb.b[l]);
        const T* ctx = l == 0 ? static_cast<const T*>(pb.ctx_h) : nullptr;
        const int64_t flags = pb.flags[l];
        const T* skip = flags & made::kSkip ? Hs[l - 2].data() + begin * NS : nullptr;  // the block's input
        T* copy = As[l].empty() ? nullptr : As[l].data() + begin * NS;
        for (int64_t k = begin; k < end; ++k) {
          for (int64_t s = 0; s < NS; ++s) {
            const int64_t i = (k - begin) * NS + s;
            T v = h[i] + bias[k];
            if (ctx && s < ns) v += ctx[(s0 + s) * pb.units[0] + k];
            if (skip) v += skip[i];
            if (flags & made::kActOut) v = ml::activate(v, pb.activation);
            h[i] = v;
            if (copy) copy[i] = ml::activate(v, pb.activation);
          }
        }
      }
      cursor[l] = end;
      prev = As[l].empty() ? Hs[l].data() : As[l].data();
      prev_count = end;
    }
    if (L > 0) prev = Hs[L - 1].data();  // the output layer reads the last layer itself
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
      const int64_t nd = (s0 + s) * D + d;
      T xv = T(0);
      int64_t xk = 0;  // class (categorical), else 0
      lp[s] += made::draw(pb.head, acc.data() + s, NS, K, noise + (pb.head == made::kGaussian ? 2 * nd : nd),
                          zs ? zs[nd] : T(0), &xv, &xk);
      if (pb.head == made::kCategorical) {
        X[(t * K + xk) * NS + s] = T(1);
        xi_out[nd] = xk;
      } else {
        X[t * NS + s] = xv;
        x_out[nd] = xv;
      }
    }
  }
  for (int64_t s = 0; s < ns; ++s) lp_out[s0 + s] = lp[s];
}

template <typename T, int NS>
void run_chunks(const made::Operands& pb, T* x_out, int64_t* xi_out, T* lp_out) {
  const int64_t chunks = (pb.n + NS - 1) / NS;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s0 = c * NS;
      sample_chunk<T, NS>(pb, s0, std::min<int64_t>(NS, pb.n - s0), x_out, xi_out, lp_out);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> made_sample(const std::vector<at::Tensor>& weights,
                                               const std::vector<at::Tensor>& biases,
                                               const std::vector<at::Tensor>& degrees,
                                               const std::optional<at::Tensor>& direct, const at::Tensor& order,
                                               const std::optional<at::Tensor>& ctx_hidden,
                                               const std::optional<at::Tensor>& ctx_out, const at::Tensor& noise,
                                               int64_t head, int64_t K, int64_t activation,
                                               const std::vector<int64_t>& program) {
  const made::Checked checked = made::check_operands(weights, biases, degrees, direct, order, ctx_hidden, ctx_out,
                                                     noise, head, K, activation, program, at::Device(at::kCPU));
  const made::Operands& pb = checked.op;
  const int64_t n = pb.n, D = pb.D;
  const auto dtype = noise.scalar_type();
  const bool categorical = head == made::kCategorical;
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
