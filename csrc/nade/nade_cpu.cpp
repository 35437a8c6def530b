// Binary NADE on the CPU (docs/DESIGN.md section 2): forward, backward, sampling, called by the
// entry points of nade_variants_cpu.cpp (kind 0) once they have checked the arguments.
//
// Forward and sampling run a block of kRows batch rows through all D steps
// together, so every load of a W or V row serves kRows rows. Per row they keep
// s = exp(-a) and h = sigmoid(a) = 1 / (1 + s) for the hidden pre-activation a.
// x is binary, so a changes only when x_d = 1, and then s is multiplied by the
// precomputed E[t] = exp(-W[:, d]): no exp per hidden unit. Rows whose |a|
// leave the range where that is exact switch to carrying a (nade_binary.inc).
// The log-likelihood is summed at the end with vectorised softplus; sampling
// compares the logit with a precomputed logit(u) (x = 1{u < sigmoid(l)}).
//
// Backward walks t = D-1 .. 0 rebuilding the state before each update
// (s *= exp(+W[:, d])), restoring exact copies of a taken every
// kCheckpointEvery steps by a first, add-only sweep. Given the forward's
// logits the recurrence of each hidden unit is independent of the others, so
// the work is split into slices of hidden units, each owning its columns of
// dW, dV and dc: no partial buffers, no reduction, the same bits for any
// number of threads.
#include "common/ops.h"
#include "nade/nade_cpu_common.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector arguments in the baseline copy (all inlined)

namespace af {
namespace nade_cpu {


// Parameters in step order, hidden axis padded to Hp (see nade_cpu_common.h).
template <typename T> struct BinParams {
  int64_t D, H, Hp;
  const T* WT;  // [D, Hp]  W[:, order[t]]
  const T* E;   // [D, Hp]  exp(-WT) (forward) or exp(+WT) (backward)
  const T* V;   // [D, Hp]  V[order[t]]
  const T* b;   // [D]      b[order[t]]
  const T* c;   // [Hp]
  const int64_t* order;
  const uint8_t* big;  // [D]  column flags kColBig, kColNonFinite (nade_cpu_common.h)
};

// Gradient buffers in step order (see nade_binary.inc).
template <typename T> struct BinGrads {
  T* dWT;  // [D, Hp]
  T* dV;   // [D, Hp]
  T* dc;   // [Hp]  (db is summed from the step gradients on the host)
};

}  // namespace nade_cpu
}  // namespace af

#define AF_NADE_LOOPS "nade/nade_binary.inc"
#include "nade/nade_isa_copies.inc"

namespace af {
namespace {

using namespace af::nade_cpu;

// Parameters in step order, padded (see nade_cpu_common.h); E = exp(-+W).
struct BinPrep {
  at::Tensor WT, E, V, b, c, order, big;
  template <typename T> BinParams<T> params(int64_t H) const {
    return {V.size(0), H, V.size(1), WT.data_ptr<T>(), E.data_ptr<T>(), V.data_ptr<T>(),
            b.data_ptr<T>(), c.data_ptr<T>(), order.data_ptr<int64_t>(), big.data_ptr<uint8_t>()};
  }
};

// One parallel region: items [0, Hp / L) gather a vector of W's columns (and
// their exp), the rest copy chunks of V's rows; b, c and the flags are serial.
// (Few parallel regions per call: on a shared machine each one can cost a
// scheduler time slice while a preempted worker is awaited.)
BinPrep prepare(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                const at::Tensor& order, bool backward) {
  const int64_t H = W.size(0), D = W.size(1);
  BinPrep p;
  p.order = order.contiguous();
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "nade_prepare", [&] {
    using T = scalar_t;
    const int64_t L = kLanes<T>, Hp = round_up(H, L), nj = Hp / L, rows_per_item = 64;
    p.WT = at::empty({D, Hp}, W.options());
    p.E = at::empty({D, Hp}, W.options());
    p.V = at::empty({D, Hp}, W.options());
    p.b = at::empty({D}, W.options());
    p.c = at::zeros({Hp}, W.options());
    p.big = at::zeros({D}, W.options().dtype(at::kByte));
    std::vector<uint8_t> big_items(static_cast<size_t>(nj * D));
    const T* w = W.data_ptr<T>();
    const T* v = V.data_ptr<T>();
    const int64_t* o = p.order.data_ptr<int64_t>();
    T* wt = p.WT.data_ptr<T>();
    T* e = p.E.data_ptr<T>();
    T* vs = p.V.data_ptr<T>();
    const T sign = backward ? T(1) : T(-1);
    parallel_items(nj + (D + rows_per_item - 1) / rows_per_item, [&](int64_t i, int64_t) {
      if (i < nj) {
        AF_NADE_WITH_ISA(Binary, [&](auto k) {
          decltype(k)::gather_columns(w, H, D, o, Hp, i * L, sign, wt, e, big_items.data() + i * D);
        });
        return;
      }
      const int64_t t0 = (i - nj) * rows_per_item, t1 = std::min(D, t0 + rows_per_item);
      for (int64_t t = t0; t < t1; ++t) {
        std::memcpy(vs + t * Hp, v + o[t] * H, sizeof(T) * H);
        std::fill(vs + t * Hp + H, vs + (t + 1) * Hp, T(0));
      }
    });
    const T* bp = b.data_ptr<T>();
    T* bs = p.b.data_ptr<T>();
    uint8_t* big = p.big.data_ptr<uint8_t>();
    for (int64_t t = 0; t < D; ++t) {
      bs[t] = bp[o[t]];
      for (int64_t j = 0; j < nj; ++j) big[t] |= big_items[j * D + t];
    }
    std::memcpy(p.c.data_ptr<T>(), c.data_ptr<T>(), sizeof(T) * H);
  });
  return p;
}

template <typename T, bool SAMPLE>
void bin_forward(const BinParams<T>& P, const T* in, T* x_out, T* logits, T* lp, int64_t B) {
  const int64_t blocks = (B + kRows - 1) / kRows;
  const int64_t per_worker = kRows * (3 * P.Hp + 2 * round_up(P.D, kLanes<T>));
  at::Tensor work = at::empty({num_workers(blocks), per_worker}, at::dtype(c10::CppTypeToScalarType<T>::value));
  T* wp = work.data_ptr<T>();
  parallel_items(blocks, [&](int64_t blk, int64_t w) {
    AF_NADE_WITH_ISA(Binary, [&](auto k) {
      decltype(k)::template forward<T, SAMPLE>(P, in, x_out, logits, lp, B, blk, blk + 1, wp + w * per_worker);
    });
  });
}

// Step-order x and dLoss/dlogit: xs[b, t] = x[b, o[t]], gs[b, t] = G[b] (x - sigmoid(l)) + GL[b, o[t]].
template <typename T>
void step_gradients(const T* x, const T* G, const T* GL, const T* logits, const int64_t* order, int64_t B, int64_t D,
                    T* xs, T* gs) {
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t t = 0; t < D; ++t) {
        const int64_t i = b * D + order[t];
        xs[b * D + t] = x[i];
        gs[b * D + t] = G[b] * nade::bernoulli_dlogit(logits[i], x[i]) + (GL ? GL[i] : T(0));
      }
    }
  });
}

template <typename T> T* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

}  // namespace

namespace nade_cpu {

void binary_forward(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                    const at::Tensor& b, const at::Tensor& order, at::Tensor& logits, at::Tensor& lp) {
  const int64_t B = x.size(0);
  const BinPrep prep = prepare(W, c, V, b, order, /*backward=*/false);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "nade_forward", [&] {
    const BinParams<scalar_t> P = prep.params<scalar_t>(W.size(0));
    bin_forward<scalar_t, false>(P, x.data_ptr<scalar_t>(), nullptr, logits.data_ptr<scalar_t>(),
                                 lp.data_ptr<scalar_t>(), B);
  });
}

void binary_sample(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                   const at::Tensor& order, const at::Tensor& u, at::Tensor& x, at::Tensor& lp) {
  const int64_t n = u.size(0), D = W.size(1);
  at::Tensor logits = at::empty({n, D}, W.options());
  const BinPrep prep = prepare(W, c, V, b, order, /*backward=*/false);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "nade_sample", [&] {
    const BinParams<scalar_t> P = prep.params<scalar_t>(W.size(0));
    bin_forward<scalar_t, true>(P, u.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(),
                                lp.data_ptr<scalar_t>(), n);
  });
}

std::vector<at::Tensor> binary_backward(const at::Tensor& grad_log_prob, const at::Tensor& GL, const at::Tensor& x,
                                        const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                        const at::Tensor& b, const at::Tensor& order, const at::Tensor& logits) {
  const int64_t B = x.size(0), H = W.size(0), D = W.size(1);
  const BinPrep prep = prepare(W, c, V, b, order, /*backward=*/true);
  const int64_t Hp = prep.WT.size(1);
  const int64_t nck = (D + kCheckpointEvery - 1) / kCheckpointEvery;
  at::Tensor dWT = at::empty({D, Hp}, W.options());  // zeroed slice by slice in the kernel
  at::Tensor dVs = at::empty({D, Hp}, W.options());
  at::Tensor dcp = at::empty({Hp}, W.options());
  at::Tensor xs = at::empty({B, D}, W.options());
  at::Tensor gs = at::empty({B, D}, W.options());
  at::Tensor dW = at::empty({H, D}, W.options());
  at::Tensor dV = at::empty({D, H}, W.options());
  at::Tensor db = at::empty({D}, W.options());
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "nade_backward", [&] {
    using T = scalar_t;
    const int64_t L = kLanes<T>;
    const BinParams<T> P = prep.params<T>(H);
    step_gradients<T>(x.data_ptr<T>(), grad_log_prob.data_ptr<T>(), ptr<T>(GL), logits.data_ptr<T>(), P.order, B, D,
                      xs.data_ptr<T>(), gs.data_ptr<T>());
    const Slices sl = make_slices(Hp, L);
    const int64_t per_worker = kRows * (4 + nck) * sl.width;
    at::Tensor work = at::empty({num_workers(sl.n), per_worker}, W.options());
    T* wp = work.data_ptr<T>();
    const BinGrads<T> out{dWT.data_ptr<T>(), dVs.data_ptr<T>(), dcp.data_ptr<T>()};
    parallel_items(sl.n, [&](int64_t i, int64_t w) {
      const int64_t j0 = i * sl.width, n = std::min(sl.width, Hp - j0);
      AF_NADE_WITH_ISA(Binary, [&](auto k) {
        decltype(k)::template backward<T>(P, xs.data_ptr<T>(), gs.data_ptr<T>(), B, j0, n, wp + w * per_worker, out);
      });
    });
    // Back to dimension space: dW columns (vector items), dV rows and db (chunks of steps).
    const T* dwt = dWT.data_ptr<T>();
    const T* dvs = dVs.data_ptr<T>();
    const T* g = gs.data_ptr<T>();
    T* dw = dW.data_ptr<T>();
    T* dv = dV.data_ptr<T>();
    T* dbp = db.data_ptr<T>();
    const int64_t nj = Hp / L, rows_per_item = 64;
    parallel_items(nj + (D + rows_per_item - 1) / rows_per_item, [&](int64_t i, int64_t) {
      if (i < nj) {
        AF_NADE_WITH_ISA(Binary, [&](auto k) { decltype(k)::scatter_columns(dwt, H, D, P.order, Hp, i * L, dw); });
        return;
      }
      const int64_t t0 = (i - nj) * rows_per_item, t1 = std::min(D, t0 + rows_per_item);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t d = P.order[t];
        std::memcpy(dv + d * H, dvs + t * Hp, sizeof(T) * H);
        T sum = 0;
        for (int64_t r = 0; r < B; ++r) sum += g[r * D + t];
        dbp[d] = sum;
      }
    });
  });
  return {dW, dcp.narrow(0, 0, H).clone(), dV, db};
}

}  // namespace nade_cpu

const char* nade_cpu_isa() { return nade_cpu::isa_name(nade_cpu::isa()); }

}  // namespace af
