// CPU row-reference of the CUDA NADE kernels: the same nade_row.h functions the
// GPU runs, one serial lane per row, rows in sequence. Not a fast path: it
// exists so that the CPU test suite checks the math the CUDA kernels run.
#include "nade/nade_row.h"
#include "nade/nade_row_glue.h"

namespace af {
namespace {

using nade_row::SerialLanes;

template <typename T, template <typename> class Head>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& WT, const at::Tensor& c,
                                                const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
                                                const nade_glue::Shapes& s) {
  using X = typename Head<T>::X;
  const int64_t B = x.size(0);
  auto lp = at::empty({B}, WT.options());
  auto l = at::empty(nade_glue::out_shape(B, s), WT.options());
  std::vector<T> a(s.H), h(s.H);
  const nade_row::Params<T> p{WT.data_ptr<T>(), c.data_ptr<T>(), V.data_ptr<T>(), b.data_ptr<T>(),
                              order.data_ptr<int64_t>(), s.D, s.H, s.K};
  for (int64_t r = 0; r < B; ++r)
    lp.data_ptr<T>()[r] = nade_row::row_forward<T, Head<T>>(p, x.data_ptr<X>() + r * s.D, a.data(), h.data(),
                                                            l.data_ptr<T>() + r * s.D * s.P, SerialLanes{});
  return {lp, l};
}

template <typename T, template <typename> class Head>
std::tuple<at::Tensor, at::Tensor> sample_impl(const at::Tensor& u, const at::Tensor& WT, const at::Tensor& c,
                                               const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
                                               const nade_glue::Shapes& s) {
  using X = typename Head<T>::X;
  const int64_t n = u.size(0);
  const bool int_x = std::is_same<X, int64_t>::value;
  at::Tensor x = at::empty({n, s.D}, int_x ? WT.options().dtype(at::kLong) : WT.options());
  auto lp = at::empty({n}, WT.options());
  std::vector<T> a(s.H), h(s.H), l(s.P);
  const nade_row::Params<T> p{WT.data_ptr<T>(), c.data_ptr<T>(), V.data_ptr<T>(), b.data_ptr<T>(),
                              order.data_ptr<int64_t>(), s.D, s.H, s.K};
  for (int64_t r = 0; r < n; ++r)
    lp.data_ptr<T>()[r] = nade_row::row_sample<T, Head<T>>(p, u.data_ptr<T>() + r * s.D * s.U,
                                                           x.data_ptr<X>() + r * s.D, a.data(), h.data(), l.data(),
                                                           SerialLanes{});
  return {x, lp};
}

template <typename T, template <typename> class Head>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& WT,
                                      const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                                      const at::Tensor& order, const at::Tensor& l, const at::Tensor& gout,
                                      const nade_glue::Shapes& s, bool real_x) {
  using X = typename Head<T>::X;
  const int64_t B = x.size(0);
  auto dWT = at::zeros_like(WT), dc = at::zeros_like(c), dV = at::zeros_like(V), db = at::zeros_like(b);
  auto dx = real_x ? at::zeros({B, s.D}, WT.options()) : at::Tensor();
  std::vector<T> a(s.H), h(s.H), acc(s.H), dl(s.P);
  const nade_row::Params<T> p{WT.data_ptr<T>(), c.data_ptr<T>(), V.data_ptr<T>(), b.data_ptr<T>(),
                              order.data_ptr<int64_t>(), s.D, s.H, s.K};
  const nade_row::Grads<T> g{dWT.data_ptr<T>(), dc.data_ptr<T>(), dV.data_ptr<T>(), db.data_ptr<T>(),
                             real_x ? dx.data_ptr<T>() : nullptr, gout.defined() ? gout.data_ptr<T>() : nullptr};
  for (int64_t r = 0; r < B; ++r)
    nade_row::row_backward<T, Head<T>>(p, x.data_ptr<X>() + r * s.D, l.data_ptr<T>() + r * s.D * s.P,
                                       g.gout ? g.gout + r * s.D * s.P : nullptr, grad.data_ptr<T>()[r], g,
                                       real_x ? g.dx + r * s.D : nullptr, a.data(),
                                       h.data(), acc.data(), dl.data(), SerialLanes{});
  return {dWT, dc, dV, db, dx};
}

// Calls F<T, Head> for the (dtype, kind) of the arguments.
#define AF_DISPATCH_ROW(kind, dtype, F, ...)                                                        \
  [&] {                                                                                             \
    const bool dbl = (dtype) == at::kDouble;                                                        \
    switch (kind) {                                                                                 \
      case 0: return dbl ? F<double, nade_row::BinaryHead>(__VA_ARGS__) : F<float, nade_row::BinaryHead>(__VA_ARGS__); \
      case 1: return dbl ? F<double, nade_row::CategoricalHead>(__VA_ARGS__)                        \
                         : F<float, nade_row::CategoricalHead>(__VA_ARGS__);                        \
      default: return dbl ? F<double, nade_row::MixtureHead>(__VA_ARGS__)                           \
                          : F<float, nade_row::MixtureHead>(__VA_ARGS__);                           \
    }                                                                                               \
  }()

}  // namespace

std::tuple<at::Tensor, at::Tensor> nade_rowref_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                       const at::Tensor& c, const at::Tensor& V,
                                                       const at::Tensor& b, const at::Tensor& order) {
  const auto s = nade_glue::check(kind, W, c, V, b, order);
  nade_glue::check_x(x, kind, s, W);
  const auto WT = nade_glue::to_WT(W, kind);
  return AF_DISPATCH_ROW(kind, W.scalar_type(), forward_impl, x.contiguous(), WT, c.contiguous(), V.contiguous(),
                         b.contiguous(), order.contiguous(), s);
}

std::tuple<at::Tensor, at::Tensor> nade_rowref_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                                      const at::Tensor& V, const at::Tensor& b,
                                                      const at::Tensor& order, const at::Tensor& u) {
  const auto s = nade_glue::check(kind, W, c, V, b, order);
  nade_glue::check_u(u, s, W);
  const auto WT = nade_glue::to_WT(W, kind);
  return AF_DISPATCH_ROW(kind, W.scalar_type(), sample_impl, u.contiguous(), WT, c.contiguous(), V.contiguous(),
                         b.contiguous(), order.contiguous(), s);
}

std::vector<at::Tensor> nade_rowref_backward(int64_t kind, const at::Tensor& grad, const at::Tensor& x,
                                             const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                             const at::Tensor& b, const at::Tensor& order, const at::Tensor& l,
                                             const std::optional<at::Tensor>& grad_outputs) {
  const auto s = nade_glue::check(kind, W, c, V, b, order);
  nade_glue::check_x(x, kind, s, W);
  TORCH_CHECK_VALUE(l.numel() == x.size(0) * s.D * s.P, "l must hold the forward outputs [B, D, P]");
  at::Tensor gout;
  if (grad_outputs.has_value() && grad_outputs->defined()) {
    TORCH_CHECK_VALUE(grad_outputs->numel() == l.numel() && grad_outputs->scalar_type() == l.scalar_type(),
                      "grad_outputs must have the outputs' shape [B, D, P] and dtype");
    gout = grad_outputs->contiguous();
  }
  const auto WT = nade_glue::to_WT(W, kind);
  auto out = AF_DISPATCH_ROW(kind, W.scalar_type(), backward_impl, grad.contiguous(), x.contiguous(), WT,
                             c.contiguous(), V.contiguous(), b.contiguous(), order.contiguous(),
                             l.contiguous(), gout, s, kind == 2);
  out[0] = nade_glue::from_WT(out[0], kind);
  return out;
}

}  // namespace af
