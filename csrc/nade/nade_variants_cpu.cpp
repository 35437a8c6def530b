// Categorical NADE and RNADE on the CPU (DESIGN.md section 2, variants):
// forward, backward, sampling. The loops are in nade_variants.inc (compiled
// once per ISA), the parameter layout and head policies in nade_dense_head.h;
// this file holds the argument checks and the launchers.
//
// Both models share one kernel, a NADE with a dense head of M outputs per step
// (categorical: M = K logits; RNADE: M = 3K = mixture logits, means,
// log-scales); a head policy (nade_dense_head.h) supplies the log-likelihood,
// its gradient and the inverse-CDF draw. Forward and sampling run blocks of
// kRows batch rows; backward runs slices of hidden units (each owns its columns
// of dW, dV, dc: deterministic, no reduction), from per-step head gradients
// computed once up front.
#include "nade/nade_dense_head.h"
#include "common/ops.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector arguments in the baseline copy (all inlined)

#ifdef AF_HAVE_ISA_VARIANTS
AF_NADE_ISA_BEGIN(avx512, AF_TARGET_AVX512, kAvx512)
#include "nade/nade_simd.inc"
#include "nade/nade_variants.inc"
AF_NADE_ISA_END
AF_NADE_ISA_BEGIN(avx2, AF_TARGET_AVX2, kAvx2)
#include "nade/nade_simd.inc"
#include "nade/nade_variants.inc"
AF_NADE_ISA_END
#endif
namespace af {
namespace nade_cpu {
namespace base {
constexpr Isa kIsa = Isa::kBase;
#include "nade/nade_simd.inc"
#include "nade/nade_variants.inc"
}  // namespace base
}  // namespace nade_cpu
}  // namespace af

namespace af {
namespace {

using namespace af::nade_cpu;

struct DensePrep {
  at::Tensor WT, V, b, c, order, E, big;
  int64_t D, H, K, M, C;
  template <typename T> DenseParams<T> params() const {
    return {D, H, V.size(2), K, M, C, WT.data_ptr<T>(), V.data_ptr<T>(), b.data_ptr<T>(), c.data_ptr<T>(),
            order.data_ptr<int64_t>(), E.defined() ? E.data_ptr<T>() : nullptr,
            big.defined() ? big.data_ptr<uint8_t>() : nullptr};
  }
};

// W3 [H, D, C], Vm [D, M, H], bm [D, M]; `carry`: also E = exp(-WT) and its big flags
// (heads with kCarry; nade_simd.inc, carried exp(-a)).
DensePrep prepare(const at::Tensor& W3, const at::Tensor& c, const at::Tensor& Vm, const at::Tensor& bm,
                  const at::Tensor& order, int64_t K, bool carry = false) {
  DensePrep p;
  p.H = W3.size(0);
  p.D = W3.size(1);
  p.C = W3.size(2);
  p.M = Vm.size(1);
  p.K = K;
  const int64_t Hp = round_up(p.H, W3.scalar_type() == at::kFloat ? kLanes<float> : kLanes<double>);
  p.order = order.contiguous();
  p.WT = step_rows_padded(W3.permute({1, 2, 0}), p.order, Hp);
  p.V = step_rows_padded(Vm, p.order, Hp);
  p.b = bm.index_select(0, p.order).contiguous();
  p.c = padded_vector(c, Hp);
  if (carry) {
    p.E = at::empty_like(p.WT);
    p.big = at::empty({p.D, p.C}, p.WT.options().dtype(at::kByte));
    AT_DISPATCH_FLOATING_TYPES(p.WT.scalar_type(), "nade_exp_rows", [&] {
      const scalar_t* wt = p.WT.data_ptr<scalar_t>();
      scalar_t* e = p.E.data_ptr<scalar_t>();
      uint8_t* big = p.big.data_ptr<uint8_t>();
      at::parallel_for(0, p.D * p.C, 16, [&](int64_t r0, int64_t r1) {
        AF_NADE_WITH_ISA(Variants, [&](auto k) { decltype(k)::exp_rows(wt, e, big, r0, r1, Hp); });
      });
    });
  }
  return p;
}

template <class Head, typename T, bool SAMPLE>
void dense_forward(const DenseParams<T>& P, const typename Head::X* x, const T* u, typename Head::X* x_out, T* out,
                   T* lp, int64_t B) {
  const int64_t blocks = (B + kRows - 1) / kRows;
  const int64_t per_worker = kRows * (3 * P.Hp + round_up(P.M, kLanes<T>));
  at::Tensor work = at::empty({num_workers(blocks), per_worker}, at::dtype(c10::CppTypeToScalarType<T>::value));
  T* wp = work.data_ptr<T>();
  parallel_items(blocks, [&](int64_t blk, int64_t w) {
    AF_NADE_WITH_ISA(Variants, [&](auto k) {
      decltype(k)::template forward<Head, T, SAMPLE>(P, x, u, x_out, out, lp, B, blk, wp + w * per_worker);
    });
  });
}

// Gradients of sum_b G[b] log_prob[b] + sum GO * outputs. Returns dW3 [H, D, C],
// dc, dVm [D, M, H], dbm [D, M] and, for a real x, dx [B, D].
template <class Head, typename T>
std::vector<at::Tensor> dense_backward(const DensePrep& prep, const typename Head::X* x, const T* G, const T* GO,
                                       const T* out, int64_t B, bool real_x, const at::TensorOptions& opt) {
  using X = typename Head::X;
  const DenseParams<T> P = prep.params<T>();
  const int64_t D = P.D, H = P.H, Hp = P.Hp, M = P.M, C = P.C, K = P.K;
  at::Tensor xs = at::empty({B, D}, real_x ? opt : opt.dtype(at::kLong));
  at::Tensor gs = at::zeros({B, D, M}, opt);
  at::Tensor dx = at::empty({real_x ? B : 0, D}, opt);
  X* xsp = static_cast<X*>(xs.data_ptr());
  T* gsp = gs.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  at::parallel_for(0, B, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t t = 0; t < D; ++t) {
        const int64_t i = b * D + P.order[t];
        T* g = gsp + (b * D + t) * M;
        xsp[b * D + t] = x[i];
        const T dxi = Head::grad(out + i * M, K, x[i], G[b], g);
        if (GO)
          for (int64_t m = 0; m < M; ++m) g[m] += GO[i * M + m];
        if (real_x) dxp[i] = dxi;
      }
    }
  });
  at::Tensor dWT = at::zeros({D, C, Hp}, opt);
  at::Tensor dVs = at::zeros({D, M, Hp}, opt);
  at::Tensor dcp = at::zeros({Hp}, opt);
  const Slices sl = make_slices(Hp, kLanes<T>);
  const int64_t nck = (D + kCheckpointEvery - 1) / kCheckpointEvery;
  const int64_t per_worker = kRows * (3 + nck) * sl.width + round_up(kRows * M, kLanes<T>);  // aligned rows
  at::Tensor work = at::empty({num_workers(sl.n), per_worker}, opt);
  at::Tensor dx_part = at::zeros({real_x ? sl.n : 0, B, D}, opt);
  T* wp = work.data_ptr<T>();
  const DenseGrads<T> grads{dWT.data_ptr<T>(), dVs.data_ptr<T>(), dcp.data_ptr<T>()};
  parallel_items(sl.n, [&](int64_t i, int64_t w) {
    const int64_t j0 = i * sl.width, n = std::min(sl.width, Hp - j0);
    T* part = real_x ? dx_part.data_ptr<T>() + i * B * D : nullptr;
    AF_NADE_WITH_ISA(Variants, [&](auto k) {
      decltype(k)::template backward<Head, T>(P, xsp, gsp, B, j0, n, wp + w * per_worker, grads, part);
    });
  });
  const at::Tensor& o = prep.order;
  at::Tensor dW3 = at::empty({H, D, C}, opt);
  dW3.index_copy_(1, o, dWT.narrow(2, 0, H).permute({2, 0, 1}));
  at::Tensor dVm = at::empty({D, M, H}, opt);
  dVm.index_copy_(0, o, dVs.narrow(2, 0, H));
  at::Tensor dbm = at::empty({D, M}, opt);
  dbm.index_copy_(0, o, gs.sum(0));
  std::vector<at::Tensor> res{dW3, dcp.narrow(0, 0, H).clone(), dVm, dbm};
  if (real_x) {
    for (int64_t i = 0; i < sl.n; ++i) dx.index_add_(1, o, dx_part[i]);  // slice order: deterministic
    res.push_back(dx);
  }
  return res;
}

// ---------------------------------------------------------------- checks

void check_common(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                  const at::Tensor& order, int64_t D) {
  check_dtype_as(c, "c", W, "W");
  check_dtype_as(V, "V", W, "W");
  check_dtype_as(b, "b", W, "W");
  check_order(order, D, "order");
  TORCH_CHECK_VALUE(order.device().is_cpu(), "order must be a CPU tensor, got ", order.device());
}

// W [H, D, K], c [H], V [D, K, H], b [D, K]; returns K.
int64_t check_categorical(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                          const at::Tensor& order) {
  check_defined(W, "W");
  TORCH_CHECK_VALUE(W.dim() == 3, "W must have shape [H, D, K], got ", W.sizes());
  const int64_t H = W.size(0), D = W.size(1), K = W.size(2);
  TORCH_CHECK_VALUE(K >= 1, "K must be >= 1, got W of shape ", W.sizes());
  check_param(W, "W", {H, D, K}, "[H, D, K]");
  check_param(c, "c", {H}, "[H]");
  check_param(V, "V", {D, K, H}, "[D, K, H]");
  check_param(b, "b", {D, K}, "[D, K]");
  check_common(W, c, V, b, order, D);
  return K;
}

// W [H, D], c [H], V [D, 3, K, H], b [D, 3, K]; returns K.
int64_t check_rnade(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                    const at::Tensor& order) {
  check_defined(W, "W");
  check_defined(V, "V");
  TORCH_CHECK_VALUE(W.dim() == 2, "W must have shape [H, D], got ", W.sizes());
  TORCH_CHECK_VALUE(V.dim() == 4 && V.size(1) == 3 && V.size(2) >= 1, "V must have shape [D, 3, K, H], got ",
                    V.sizes());
  const int64_t H = W.size(0), D = W.size(1), K = V.size(2);
  check_param(W, "W", {H, D}, "[H, D]");
  check_param(c, "c", {H}, "[H]");
  check_param(V, "V", {D, 3, K, H}, "[D, 3, K, H]");
  check_param(b, "b", {D, 3, K}, "[D, 3, K]");
  check_common(W, c, V, b, order, D);
  return K;
}

void check_x_categorical(const at::Tensor& x, int64_t D, int64_t K) {
  check_defined(x, "x");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, "x must be an int64 tensor of class indices, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == D, "x must have shape [B, D] with D=", D, ", got ", x.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x must be a CPU tensor, got ", x.device());
  check_contiguous(x, "x");
  TORCH_CHECK_VALUE(x.numel() == 0 || (x.min().item<int64_t>() >= 0 && x.max().item<int64_t>() < K),
                    "x values must lie in [0, K=", K, ")");
}

void check_shaped(const at::Tensor& t, const char* name, const at::Tensor& W, at::IntArrayRef shape,
                  const char* shape_names) {
  check_defined(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == W.scalar_type(), name, " must have the same dtype as W (", W.scalar_type(),
                   "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape_names, " = ", shape, ", got ", t.sizes());
  check_contiguous(t, name);
}

// x [B, D] real (RNADE), W's dtype; returns B.
int64_t check_x_real(const at::Tensor& x, const at::Tensor& W, int64_t D) {
  check_defined(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "x must have shape [B, D], got ", x.sizes());
  check_shaped(x, "x", W, {x.size(0), D}, "[B, D]");
  return x.size(0);
}

// RNADE as the dense-head kernel's parameters: M = 3K outputs per step.
DensePrep prepare_rnade(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                        const at::Tensor& order, int64_t K) {
  const int64_t H = W.size(0), D = W.size(1);
  return prepare(W.view({H, D, 1}), c, V.view({D, 3 * K, H}), b.view({D, 3 * K}), order, K);
}

template <typename T> const T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

}  // namespace

// ---------------------------------------------------------------- categorical NADE

std::tuple<at::Tensor, at::Tensor> categorical_nade_forward(const at::Tensor& x, const at::Tensor& W,
                                                            const at::Tensor& c, const at::Tensor& V,
                                                            const at::Tensor& b, const at::Tensor& order) {
  const int64_t K = check_categorical(W, c, V, b, order);
  const int64_t D = W.size(1);
  check_x_categorical(x, D, K);
  const int64_t B = x.size(0);
  at::Tensor logits = at::empty({B, D, K}, W.options());
  at::Tensor lp = at::empty({B}, W.options());
  const DensePrep prep = prepare(W, c, V, b, order, K, /*carry=*/true);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "categorical_nade_forward", [&] {
    using T = scalar_t;
    dense_forward<CategoricalHead<T>, T, false>(prep.params<T>(), x.data_ptr<int64_t>(), nullptr, nullptr,
                                                logits.data_ptr<T>(), lp.data_ptr<T>(), B);
  });
  return {lp, logits};
}

std::tuple<at::Tensor, at::Tensor> categorical_nade_sample(const at::Tensor& W, const at::Tensor& c,
                                                           const at::Tensor& V, const at::Tensor& b,
                                                           const at::Tensor& order, const at::Tensor& u) {
  const int64_t K = check_categorical(W, c, V, b, order);
  const int64_t D = W.size(1);
  check_defined(u, "u");
  TORCH_CHECK_VALUE(u.dim() == 2, "u must have shape [n, D], got ", u.sizes());
  check_shaped(u, "u", W, {u.size(0), D}, "[n, D]");
  check_uniforms(u, "u");
  const int64_t n = u.size(0);
  at::Tensor x = at::empty({n, D}, W.options().dtype(at::kLong));
  at::Tensor logits = at::empty({n, D, K}, W.options());
  at::Tensor lp = at::empty({n}, W.options());
  const DensePrep prep = prepare(W, c, V, b, order, K, /*carry=*/true);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "categorical_nade_sample", [&] {
    using T = scalar_t;
    dense_forward<CategoricalHead<T>, T, true>(prep.params<T>(), nullptr, u.data_ptr<T>(), x.data_ptr<int64_t>(),
                                               logits.data_ptr<T>(), lp.data_ptr<T>(), n);
  });
  return {x, lp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> categorical_nade_backward(
    const at::Tensor& grad_log_prob, const std::optional<at::Tensor>& grad_logits, const at::Tensor& x,
    const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
    const at::Tensor& logits) {
  const int64_t K = check_categorical(W, c, V, b, order);
  const int64_t D = W.size(1);
  check_x_categorical(x, D, K);
  const int64_t B = x.size(0);
  check_shaped(grad_log_prob, "grad_log_prob", W, {B}, "[B]");
  check_shaped(logits, "logits", W, {B, D, K}, "[B, D, K]");
  if (grad_logits.has_value() && grad_logits->defined())
    check_shaped(*grad_logits, "grad_logits", W, {B, D, K}, "[B, D, K]");
  const DensePrep prep = prepare(W, c, V, b, order, K);
  std::vector<at::Tensor> g;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "categorical_nade_backward", [&] {
    using T = scalar_t;
    g = dense_backward<CategoricalHead<T>, T>(prep, x.data_ptr<int64_t>(), grad_log_prob.data_ptr<T>(),
                                              opt_ptr<T>(grad_logits), logits.data_ptr<T>(), B, false, W.options());
  });
  return {g[0], g[1], g[2], g[3]};
}

// ---------------------------------------------------------------- RNADE

std::tuple<at::Tensor, at::Tensor> rnade_forward(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                                 const at::Tensor& V, const at::Tensor& b, const at::Tensor& order) {
  const int64_t K = check_rnade(W, c, V, b, order);
  const int64_t D = W.size(1);
  const int64_t B = check_x_real(x, W, D);
  TORCH_CHECK_VALUE(x.numel() == 0 || x.isfinite().all().item<bool>(), "x must be finite");
  at::Tensor params = at::empty({B, D, 3, K}, W.options());
  at::Tensor lp = at::empty({B}, W.options());
  const DensePrep prep = prepare_rnade(W, c, V, b, order, K);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "rnade_forward", [&] {
    using T = scalar_t;
    dense_forward<MixtureHead<T>, T, false>(prep.params<T>(), x.data_ptr<T>(), nullptr, nullptr,
                                            params.data_ptr<T>(), lp.data_ptr<T>(), B);
  });
  return {lp, params};
}

std::tuple<at::Tensor, at::Tensor> rnade_sample(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                                const at::Tensor& b, const at::Tensor& order, const at::Tensor& u) {
  const int64_t K = check_rnade(W, c, V, b, order);
  const int64_t D = W.size(1);
  check_defined(u, "u");
  TORCH_CHECK_VALUE(u.dim() == 3, "u must have shape [n, D, 2], got ", u.sizes());
  check_shaped(u, "u", W, {u.size(0), D, 2}, "[n, D, 2]");
  check_uniforms(u, "u");
  const int64_t n = u.size(0);
  at::Tensor x = at::empty({n, D}, W.options());
  at::Tensor params = at::empty({n, D, 3, K}, W.options());
  at::Tensor lp = at::empty({n}, W.options());
  const DensePrep prep = prepare_rnade(W, c, V, b, order, K);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "rnade_sample", [&] {
    using T = scalar_t;
    dense_forward<MixtureHead<T>, T, true>(prep.params<T>(), nullptr, u.data_ptr<T>(), x.data_ptr<T>(),
                                           params.data_ptr<T>(), lp.data_ptr<T>(), n);
  });
  return {x, lp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnade_backward(
    const at::Tensor& grad_log_prob, const std::optional<at::Tensor>& grad_params, const at::Tensor& x,
    const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
    const at::Tensor& params) {
  const int64_t K = check_rnade(W, c, V, b, order);
  const int64_t D = W.size(1), H = W.size(0);
  const int64_t B = check_x_real(x, W, D);
  check_shaped(grad_log_prob, "grad_log_prob", W, {B}, "[B]");
  check_shaped(params, "params", W, {B, D, 3, K}, "[B, D, 3, K]");
  if (grad_params.has_value() && grad_params->defined())
    check_shaped(*grad_params, "grad_params", W, {B, D, 3, K}, "[B, D, 3, K]");
  const DensePrep prep = prepare_rnade(W, c, V, b, order, K);
  std::vector<at::Tensor> g;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "rnade_backward", [&] {
    using T = scalar_t;
    g = dense_backward<MixtureHead<T>, T>(prep, x.data_ptr<T>(), grad_log_prob.data_ptr<T>(),
                                          opt_ptr<T>(grad_params), params.data_ptr<T>(), B, true, W.options());
  });
  return {g[0].view({H, D}), g[1], g[2].view({D, 3, K, H}), g[3].view({D, 3, K}), g[4]};
}

}  // namespace af
