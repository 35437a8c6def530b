// The NADE family on the CPU (docs/DESIGN.md section 2): the entry points nade_forward /
// nade_backward / nade_sample(kind, ...) of armodel_fast._C, and the dense-head kernel
// that runs every variant but binary NADE (which has its own kernel, nade_cpu.cpp).
//
// The kind switch is nade::visit_kind (nade_kinds.h): a new variant's head
// (nade_heads.h) runs here with no other change. The dense kernel is a NADE with M outputs
// per step and C input columns per dimension (categorical: M = C = K; RNADE: M = 3K,
// C = 1, the input scaled by x). Its loops are in nade_variants.inc (compiled once per
// ISA). Forward and sampling run blocks of kRows batch rows; backward runs slices of
// hidden units (each owns its columns of dW, dV, dc: deterministic, no reduction), from
// per-step head gradients computed once up front.
#include "common/ops.h"
#include "nade/nade_dense_head.h"
#include "nade/nade_row_glue.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector arguments in the baseline copy (all inlined)

#define AF_NADE_LOOPS "nade/nade_variants.inc"
#include "nade/nade_isa_copies.inc"

namespace af {
namespace {

using namespace af::nade_cpu;
using nade_glue::Shapes;

struct DensePrep {
  at::Tensor WT, V, b, c, order, E, flags;
  int64_t D, H, K, M, C;
  template <typename T> DenseParams<T> params() const {
    return {D, H, V.size(2), K, M, C, WT.data_ptr<T>(), V.data_ptr<T>(), b.data_ptr<T>(), c.data_ptr<T>(),
            order.data_ptr<int64_t>(), E.defined() ? E.data_ptr<T>() : nullptr, flags.data_ptr<uint8_t>()};
  }
};

// Step-order, padded parameters: WT [D, C, Hp], V [D, M, Hp], b [D, M], c [Hp], the column
// flags and, for heads that carry exp(-a) (`carry`), E = exp(-WT).
DensePrep prepare(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                  const at::Tensor& order, const Shapes& s, bool carry) {
  DensePrep p;
  p.H = s.H;
  p.D = s.D;
  p.C = s.Kin;
  p.M = s.P;
  p.K = s.K;
  const int64_t Hp = round_up(p.H, W.scalar_type() == at::kFloat ? kLanes<float> : kLanes<double>);
  p.order = order.contiguous();
  p.WT = step_rows_padded(W.view({p.H, p.D, p.C}).permute({1, 2, 0}), p.order, Hp);
  p.V = step_rows_padded(V.view({p.D, p.M, p.H}), p.order, Hp);
  p.b = b.view({p.D, p.M}).index_select(0, p.order).contiguous();
  p.c = padded_vector(c, Hp);
  if (carry) p.E = at::empty_like(p.WT);
  p.flags = at::empty({p.D, p.C}, p.WT.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(p.WT.scalar_type(), "nade_column_flags", [&] {
    const scalar_t* wt = p.WT.data_ptr<scalar_t>();
    scalar_t* e = carry ? p.E.data_ptr<scalar_t>() : nullptr;
    uint8_t* flags = p.flags.data_ptr<uint8_t>();
    at::parallel_for(0, p.D * p.C, 16, [&](int64_t r0, int64_t r1) {
      AF_NADE_WITH_ISA(Variants, [&](auto k) { decltype(k)::column_flags(wt, e, flags, r0, r1, Hp); });
    });
  });
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

// Gradients of sum_b G[b] log_prob[b] + sum GO * outputs: [dW [H, D, C], dc, dV [D, M, H],
// db [D, M], dx [B, D] (a continuous x) or undefined].
template <class Head, typename T>
std::vector<at::Tensor> dense_backward(const DensePrep& prep, const typename Head::X* x, const T* G, const T* GO,
                                       const T* out, int64_t B, const at::TensorOptions& opt) {
  using X = typename Head::X;
  constexpr bool real_x = Head::kRealX;
  const DenseParams<T> P = prep.params<T>();
  const int64_t D = P.D, H = P.H, Hp = P.Hp, M = P.M, C = P.C, K = P.K;
  at::Tensor xs = at::empty({B, D}, std::is_same<X, int64_t>::value ? opt.dtype(at::kLong) : opt);
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
  std::vector<at::Tensor> res{dW3, dcp.narrow(0, 0, H).clone(), dVm, dbm, at::Tensor()};
  if (real_x) {
    for (int64_t i = 0; i < sl.n; ++i) dx.index_add_(1, o, dx_part[i]);  // slice order: deterministic
    res[4] = dx;
  }
  return res;
}

// ---------------------------------------------------------------- checks

void check_cpu(const at::Tensor& t, const char* name) {
  check_defined(t, name);
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, name, " must be a dense (strided) tensor, got layout ", t.layout());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the cpp backend, got ", t.device());
  check_contiguous(t, name);
}

Shapes check_params(int64_t kind, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                    const at::Tensor& b, const at::Tensor& order) {
  check_cpu(W, "W");
  check_cpu(c, "c");
  check_cpu(V, "V");
  check_cpu(b, "b");
  const Shapes s = nade_glue::check(kind, W, c, V, b, order);
  TORCH_CHECK_VALUE(order.device().is_cpu(), "order must be a CPU tensor, got ", order.device());
  return s;
}

void check_x_cpu(const at::Tensor& x, const Shapes& s, const at::Tensor& W) {
  nade_glue::check_x(x, s, W);
  check_cpu(x, "x");
}

// t must have W's dtype and exactly this shape (and be a contiguous CPU tensor).
void check_like(const at::Tensor& t, const char* name, const at::Tensor& W, const std::vector<int64_t>& shape) {
  check_cpu(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == W.scalar_type(), name, " must have the same dtype as W (", W.scalar_type(),
                   "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes().vec() == shape, name, " must have shape ", at::IntArrayRef(shape), ", got ",
                    t.sizes());
}

template <typename T> const T* opt_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// f<Head>() with Head the head of `kind` for W's dtype T (already checked: float or double).
#define AF_NADE_CPU_DISPATCH(kind, W, ...)                                                        \
  AT_DISPATCH_FLOATING_TYPES((W).scalar_type(), "nade_cpu", [&] {                                 \
    using T = scalar_t;                                                                            \
    nade::visit_kind((kind), [&](auto tag) {                                                       \
      using Head = typename decltype(tag)::template Head<T>;                                       \
      __VA_ARGS__                                                                                  \
    });                                                                                            \
  })

// Binary NADE runs its own kernel (nade_cpu.cpp); every other head the dense one.
template <class Head> struct IsBinary : std::false_type {};
template <typename T> struct IsBinary<nade::BinaryHead<T>> : std::true_type {};

}  // namespace

std::tuple<at::Tensor, at::Tensor> nade_forward(int64_t kind, const at::Tensor& x, const at::Tensor& W,
                                                const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                                                const at::Tensor& order) {
  const Shapes s = check_params(kind, W, c, V, b, order);
  check_x_cpu(x, s, W);
  const int64_t B = x.size(0);
  at::Tensor out = at::empty(nade_glue::out_shape(B, s), W.options());
  at::Tensor lp = at::empty({B}, W.options());
  AF_NADE_CPU_DISPATCH(kind, W, {
    nade_glue::check_x_values<Head>(x, s.K);
    if constexpr (IsBinary<Head>::value) {
      nade_cpu::binary_forward(x, W, c, V, b, order, out, lp);
    } else {
      const DensePrep prep = prepare(W, c, V, b, order, s, Head::kCarry);
      dense_forward<Head, T, false>(prep.params<T>(), x.data_ptr<typename Head::X>(), nullptr, nullptr,
                                    out.data_ptr<T>(), lp.data_ptr<T>(), B);
    }
  });
  return {lp, out};
}

std::tuple<at::Tensor, at::Tensor> nade_sample(int64_t kind, const at::Tensor& W, const at::Tensor& c,
                                               const at::Tensor& V, const at::Tensor& b, const at::Tensor& order,
                                               const at::Tensor& u) {
  const Shapes s = check_params(kind, W, c, V, b, order);
  nade_glue::check_u(u, s, W);
  check_cpu(u, "u");
  check_uniforms(u, "u");
  const int64_t n = u.size(0);
  at::Tensor x = at::empty({n, s.D}, s.int_x ? W.options().dtype(at::kLong) : W.options());
  at::Tensor lp = at::empty({n}, W.options());
  AF_NADE_CPU_DISPATCH(kind, W, {
    if constexpr (IsBinary<Head>::value) {
      nade_cpu::binary_sample(W, c, V, b, order, u, x, lp);
    } else {
      at::Tensor out = at::empty(nade_glue::out_shape(n, s), W.options());
      const DensePrep prep = prepare(W, c, V, b, order, s, Head::kCarry);
      dense_forward<Head, T, true>(prep.params<T>(), nullptr, u.data_ptr<T>(), x.data_ptr<typename Head::X>(),
                                   out.data_ptr<T>(), lp.data_ptr<T>(), n);
    }
  });
  return {x, lp};
}

std::vector<at::Tensor> nade_backward(int64_t kind, const at::Tensor& grad,
                                      const std::optional<at::Tensor>& grad_outputs, const at::Tensor& x,
                                      const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                      const at::Tensor& b, const at::Tensor& order, const at::Tensor& outputs) {
  const Shapes s = check_params(kind, W, c, V, b, order);
  check_x_cpu(x, s, W);
  const int64_t B = x.size(0);
  check_like(grad, "grad", W, {B});
  check_like(outputs, "outputs", W, nade_glue::out_shape(B, s));
  at::Tensor go;
  if (grad_outputs.has_value() && grad_outputs->defined()) {
    go = *grad_outputs;
    check_like(go, "grad_outputs", W, nade_glue::out_shape(B, s));
  }
  std::vector<at::Tensor> g;
  AF_NADE_CPU_DISPATCH(kind, W, {
    nade_glue::check_x_values<Head>(x, s.K);
    if constexpr (IsBinary<Head>::value) {
      g = nade_cpu::binary_backward(grad, go, x, W, c, V, b, order, outputs);
      g.push_back(at::Tensor());
    } else {
      const DensePrep prep = prepare(W, c, V, b, order, s, false);
      g = dense_backward<Head, T>(prep, x.data_ptr<typename Head::X>(), grad.data_ptr<T>(), opt_ptr<T>(go),
                                  outputs.data_ptr<T>(), B, W.options());
      g[0] = g[0].view(W.sizes());
      g[2] = g[2].view(V.sizes());
      g[3] = g[3].view(b.sizes());
    }
  });
  return g;
}

}  // namespace af
