// One NADE row, written once for the CUDA kernels (a warp per row) and for the
// CPU row-reference that tests them (one "lane" per row): docs/DESIGN.md sections 2, 5.
//
// The hidden units of a row are split over L.count() lanes (unit j belongs to
// lane j % count); each lane touches only its own units of the per-row scratch
// vectors a, h, acc, so lanes never wait for each other. Dot products over H
// are reduced with L.sum(), which must leave the bitwise-same value in every
// lane (a butterfly reduction does), so every lane takes the same sampling
// decisions and writes the same per-step outputs. Shared accumulators (the
// parameter gradients) are updated with L.add() (atomic on the GPU).
//
// Layouts (all contiguous, dimension-major so a step reads contiguous rows):
//   WT [D, Kin, H]  input columns: Kin = 1 (binary, RNADE) or K (categorical)
//   V  [D, P, H], b [D, P]  with P outputs per dimension (1, K or 3K)
//   c  [H], order [D] (int64 permutation)
//   bad_col [D, Kin]: 1 if the input column has an inf or NaN (or nullptr: none has)
// The heads (nade_heads.h) supply everything that differs between the variants.
#pragma once

#include "nade/nade_heads.h"

namespace af {
namespace nade_row {

template <typename T> struct Params {
  const T* WT;
  const T* c;
  const T* V;
  const T* b;
  const int64_t* order;
  int64_t D, H, K;
  const uint8_t* bad_col;
};

// a += sign * WT[d, column(x_d)] * scale(x_d) over this lane's units. A zero scale skips
// the column unless it holds an inf or NaN (0 * w is NaN there, as in the reference).
template <typename T, class Head, class Lanes>
AF_HD AF_FI void add_input(const Params<T>& p, int64_t d, typename Head::X xd, T sign, T* a, const Lanes& L) {
  const T s = sign * Head::scale(xd);
  const int64_t col = d * Head::Kin(p.K) + Head::column(xd);
  if (s == T(0) && !(p.bad_col != nullptr && p.bad_col[col])) return;
  const T* w = p.WT + col * p.H;
  for (int64_t j = L.lane(); j < p.H; j += L.count()) a[j] += s * w[j];
}

// h = sigmoid(a); l[k] = b[d, k] + V[d, k] . h for the P outputs of dimension d.
template <typename T, class Head, class Lanes>
AF_HD AF_FI void outputs(const Params<T>& p, int64_t d, const T* a, T* h, T* l, const Lanes& L) {
  const int64_t P = Head::P(p.K);
  for (int64_t j = L.lane(); j < p.H; j += L.count()) h[j] = nade::sigmoid(a[j]);
  for (int64_t k = 0; k < P; ++k) {
    const T* v = p.V + (d * P + k) * p.H;
    T part = 0;
    for (int64_t j = L.lane(); j < p.H; j += L.count()) part += v[j] * h[j];
    l[k] = p.b[d * P + k] + L.sum(part);
  }
}

// log p(x) of one row; writes the outputs l [D, P] (dimension space).
template <typename T, class Head, class Lanes>
AF_HD T row_forward(const Params<T>& p, const typename Head::X* x, T* a, T* h, T* l, const Lanes& L) {
  const int64_t P = Head::P(p.K);
  for (int64_t j = L.lane(); j < p.H; j += L.count()) a[j] = p.c[j];
  T lp = 0;
  for (int64_t t = 0; t < p.D; ++t) {
    const int64_t d = p.order[t];
    outputs<T, Head>(p, d, a, h, l + d * P, L);
    lp += Head::log_prob(l + d * P, p.K, x[d]);
    add_input<T, Head>(p, d, x[d], T(1), a, L);
  }
  return lp;
}

// Draws one row x [D] from uniforms u [D, kU]; l [P] is scratch; returns log p(x).
template <typename T, class Head, class Lanes>
AF_HD T row_sample(const Params<T>& p, const T* u, typename Head::X* x, T* a, T* h, T* l, const Lanes& L) {
  for (int64_t j = L.lane(); j < p.H; j += L.count()) a[j] = p.c[j];
  T lp = 0;
  for (int64_t t = 0; t < p.D; ++t) {
    const int64_t d = p.order[t];
    outputs<T, Head>(p, d, a, h, l, L);
    const typename Head::X xd = Head::draw(l, p.K, u + d * Head::kU);
    x[d] = xd;  // every lane writes the same value
    lp += Head::log_prob(l, p.K, xd);
    add_input<T, Head>(p, d, xd, T(1), a, L);
  }
  return lp;
}

template <typename T> struct Grads {
  T* dWT;  // [D, Kin, H]
  T* dc;   // [H]
  T* dV;   // [D, P, H]
  T* db;   // [D, P]
  T* dx;   // [B, D] or nullptr (only RNADE has a real-valued x)
  const T* gout;  // [B, D, P] upstream gradient of the outputs l, or nullptr (read only)
};

// Adds G * d log p(x) / d(params) of one row to g (the reverse recurrence of
// docs/DESIGN.md section 2), plus, when gout (this row's [D, P] slice) is given, the
// gradient of sum(gout * l): it joins the head's gradient of each step. l [D, P]
// are the forward outputs; dl [P] is this lane's scratch; a, h, acc [H] are the
// row's scratch vectors; dx points at this row's [D] slice (or is nullptr).
template <typename T, class Head, class Lanes>
AF_HD void row_backward(const Params<T>& p, const typename Head::X* x, const T* l, const T* gout, T G,
                        const Grads<T>& g, T* dx, T* a, T* h, T* acc, T* dl, const Lanes& L) {
  const int64_t P = Head::P(p.K), Kin = Head::Kin(p.K);
  for (int64_t j = L.lane(); j < p.H; j += L.count()) {
    a[j] = p.c[j];
    acc[j] = 0;
  }
  for (int64_t d = 0; d < p.D; ++d) add_input<T, Head>(p, d, x[d], T(1), a, L);  // a_D
  for (int64_t t = p.D - 1; t >= 0; --t) {
    const int64_t d = p.order[t];
    add_input<T, Head>(p, d, x[d], T(-1), a, L);  // a_t = a_{t+1} - W[:, d] x_d
    for (int64_t j = L.lane(); j < p.H; j += L.count()) h[j] = nade::sigmoid(a[j]);
    for (int64_t k = 0; k < P; ++k) dl[k] = 0;
    const T dxd = Head::grad(l + d * P, p.K, x[d], G, dl);
    if (gout)
      for (int64_t k = 0; k < P; ++k) dl[k] += gout[d * P + k];
    if (L.lane() == 0) {
      for (int64_t k = 0; k < P; ++k) L.add(g.db + d * P + k, dl[k]);
      if (dx) dx[d] += dxd;
    }
    for (int64_t j = L.lane(); j < p.H; j += L.count()) {
      T s = 0;
      for (int64_t k = 0; k < P; ++k) {
        L.add(g.dV + (d * P + k) * p.H + j, dl[k] * h[j]);
        s += dl[k] * p.V[(d * P + k) * p.H + j];
      }
      acc[j] += s * h[j] * (T(1) - h[j]);  // acc = sum_{t' >= t} da_t'
    }
    if (t == 0) break;
    const int64_t e = p.order[t - 1];  // a_{t'} for t' >= t saw W[:, e] x_e
    const T se = Head::scale(x[e]);
    const int64_t col = (e * Kin + Head::column(x[e])) * p.H;
    if (se != T(0))
      for (int64_t j = L.lane(); j < p.H; j += L.count()) L.add(g.dWT + col + j, acc[j] * se);
    if (dx) {  // RNADE: d a_{t'} / d x_e = W[:, e]
      T dot = 0;
      for (int64_t j = L.lane(); j < p.H; j += L.count()) dot += p.WT[col + j] * acc[j];
      const T total = L.sum(dot);
      if (L.lane() == 0) dx[e] += total;
    }
  }
  for (int64_t j = L.lane(); j < p.H; j += L.count()) L.add(g.dc + j, acc[j]);
}

// The CPU row-reference runs each row with a single lane.
struct SerialLanes {
  AF_HD AF_FI int64_t lane() const { return 0; }
  AF_HD AF_FI int64_t count() const { return 1; }
  template <typename T> AF_HD AF_FI T sum(T v) const { return v; }
  template <typename T> AF_HD AF_FI void add(T* p, T v) const { *p += v; }
};

}  // namespace nade_row
}  // namespace af
