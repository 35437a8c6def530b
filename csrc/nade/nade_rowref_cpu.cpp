// CPU row-reference of the CUDA NADE kernels: the same nade_row.h functions the
// GPU runs, one serial lane per row, rows in sequence. Not a fast path: it
// exists so that the CPU test suite checks the math the CUDA kernels run.
#include "common/ops.h"
#include "nade/nade_row.h"
#include "nade/nade_row_glue.h"

namespace af {
namespace {

using nade_row::SerialLanes;

// The operands of the row math, contiguous, in its layouts; bad_col as nade_row.h.
struct RowPrep {
  at::Tensor WT, c, V, b, order, bad_col;
  template <typename T> nade_row::Params<T> params(const nade_glue::Shapes& s) const {
    return {WT.data_ptr<T>(), c.data_ptr<T>(), V.data_ptr<T>(), b.data_ptr<T>(), order.data_ptr<int64_t>(),
            s.D, s.H, s.K, bad_col.data_ptr<uint8_t>()};
  }
};

RowPrep prepare(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                const at::Tensor& order, const nade_glue::Shapes& s) {
  RowPrep p{nade_glue::to_WT(W, s), c.contiguous(), V.contiguous(), b.contiguous(), order.contiguous(), {}};
  p.bad_col = nade_glue::bad_columns(p.WT);
  return p;
}

template <typename T, class Head>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const RowPrep& r, const nade_glue::Shapes& s) {
  using X = typename Head::X;
  const int64_t B = x.size(0);
  auto lp = at::empty({B}, r.WT.options());
  auto l = at::empty(nade_glue::out_shape(B, s), r.WT.options());
  std::vector<T> a(s.H), h(s.H);
  const nade_row::Params<T> p = r.params<T>(s);
  for (int64_t i = 0; i < B; ++i)
    lp.data_ptr<T>()[i] = nade_row::row_forward<T, Head>(p, x.data_ptr<X>() + i * s.D, a.data(), h.data(),
                                                         l.data_ptr<T>() + i * s.D * s.P, SerialLanes{});
  return {lp, l};
}

template <typename T, class Head>
std::tuple<at::Tensor, at::Tensor> sample_impl(const at::Tensor& u, const RowPrep& r, const nade_glue::Shapes& s) {
  using X = typename Head::X;
  const int64_t n = u.size(0);
  at::Tensor x = at::empty({n, s.D}, s.int_x ? r.WT.options().dtype(at::kLong) : r.WT.options());
  auto lp = at::empty({n}, r.WT.options());
  std::vector<T> a(s.H), h(s.H), l(s.P);
  const nade_row::Params<T> p = r.params<T>(s);
  for (int64_t i = 0; i < n; ++i)
    lp.data_ptr<T>()[i] = nade_row::row_sample<T, Head>(p, u.data_ptr<T>() + i * s.D * s.U,
                                                        x.data_ptr<X>() + i * s.D, a.data(), h.data(), l.data(),
                                                        SerialLanes{});
  return {x, lp};
}

template <typename T, class Head>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& x, const RowPrep& r,
                                      const at::Tensor& l, const at::Tensor& gout, const nade_glue::Shapes& s) {
  using X = typename Head::X;
  const int64_t B = x.size(0);
  auto dWT = at::zeros_like(r.WT), dc = at::zeros_like(r.c), dV = at::zeros_like(r.V), db = at::zeros_like(r.b);
  auto dx = s.real_x ? at::zeros({B, s.D}, r.WT.options()) : at::Tensor();
  std::vector<T> a(s.H), h(s.H), acc(s.H), dl(s.P);
  const nade_row::Params<T> p = r.params<T>(s);
  const nade_row::Grads<T> g{dWT.data_ptr<T>(), dc.data_ptr<T>(), dV.data_ptr<T>(), db.data_ptr<T>(),
                             s.real_x ? dx.data_ptr<T>() : nullptr, gout.defined() ? gout.data_ptr<T>() : nullptr};
  for (int64_t i = 0; i < B; ++i)
    nade_row::row_backward<T, Head>(p, x.data_ptr<X>() + i * s.D, l.data_ptr<T>() + i * s.D * s.P,
                                    g.gout ? g.gout + i * s.D * s.P : nullptr, grad.data_ptr<T>()[i], g,
                                    s.real_x ? g.dx + i * s.D : nullptr, a.data(), h.data(), acc.data(), dl.data(),
                                    SerialLanes{});
  return {nade_glue::from_WT(dWT, s), dc, dV, db, dx};
}

// body with T (W's dtype) and Head (the head of `kind`).
#define AF_ROWREF_DISPATCH(kind, W, ...)                               \
  AT_DISPATCH_FLOATING_TYPES((W).scalar_type(), "nade_rowref", [&] {   \
    using T = scalar_t;                                                \
    nade::visit_kind((kind), [&](auto tag) {                           \
      using Head = typename decltype(tag)::template Head<T>;           \
      __VA_ARGS__                                                      \
    });                                                                \
  })

}  // namespace

std::tuple<at::Tensor, at::Tensor> nade_rowref_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                       const at::Tensor& c, const at::Tensor& V,
                                                       const at::Tensor& b, const at::Tensor& order) {
  const auto s = nade_glue::check(kind, W, c, V, b, order);
  nade_glue::check_x(x, s, W);
  const RowPrep r = prepare(W, c, V, b, order, s);
  std::tuple<at::Tensor, at::Tensor> out;
  AF_ROWREF_DISPATCH(kind, W, { out = forward_impl<T, Head>(x.contiguous(), r, s); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> nade_rowref_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                                      const at::Tensor& V, const at::Tensor& b,
                                                      const at::Tensor& order, const at::Tensor& u) {
  const auto s = nade_glue::check(kind, W, c, V, b, order);
  nade_glue::check_u(u, s, W);
  const RowPrep r = prepare(W, c, V, b, order, s);
  std::tuple<at::Tensor, at::Tensor> out;
  AF_ROWREF_DISPATCH(kind, W, { out = sample_impl<T, Head>(u.contiguous(), r, s); });
  return out;
}

std::vector<at::Tensor> nade_rowref_backward(int64_t kind, const at::Tensor& grad, const at::Tensor& x,
                                             const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                             const at::Tensor& b, const at::Tensor& order, const at::Tensor& l,
                                             const std::optional<at::Tensor>& grad_outputs) {
  const auto s = nade_glue::check(kind, W, c, V, b, order);
  nade_glue::check_x(x, s, W);
  TORCH_CHECK_VALUE(l.numel() == x.size(0) * s.D * s.P, "l must hold the forward outputs [B, D, P]");
  at::Tensor gout;
  if (grad_outputs.has_value() && grad_outputs->defined()) {
    TORCH_CHECK_VALUE(grad_outputs->numel() == l.numel() && grad_outputs->scalar_type() == l.scalar_type(),
                      "grad_outputs must have the outputs' shape [B, D, P] and dtype");
    gout = grad_outputs->contiguous();
  }
  const RowPrep r = prepare(W, c, V, b, order, s);
  std::vector<at::Tensor> out;
  AF_ROWREF_DISPATCH(kind, W, { out = backward_impl<T, Head>(grad.contiguous(), x.contiguous(), r, l.contiguous(), gout, s); });
  return out;
}

}  // namespace af
