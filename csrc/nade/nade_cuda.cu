// CUDA NADE kernels: one warp per batch row, the row math of nade_row.h
// (shared with the CPU row-reference, so the CPU tests exercise it).
#include "nade/nade_cuda.h"
#include "nade/nade_kinds.h"
#include "nade/nade_row.h"

namespace af {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;  // warps per block

struct WarpLanes {
  int64_t lane_;
  __device__ __forceinline__ int64_t lane() const { return lane_; }
  __device__ __forceinline__ int64_t count() const { return kWarp; }
  template <typename T> __device__ __forceinline__ T sum(T v) const {
    // Butterfly: every lane ends with the bitwise-same total (nade_row.h relies on it).
    for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
  }
  template <typename T> __device__ __forceinline__ void add(T* p, T v) const { atomicAdd(p, v); }
};

template <typename T> struct Scratch {
  T *a, *h, *acc, *dl;
};

template <typename T> __device__ __forceinline__ Scratch<T> row_scratch(void* base, int64_t B, int64_t H,
                                                                      int64_t P, int64_t row, int64_t lane) {
  T* s = static_cast<T*>(base);
  return {s + row * H, s + (B + row) * H, s + (2 * B + row) * H, s + 3 * B * H + (row * kWarp + lane) * P};
}

template <typename T> nade_row::Params<T> params(const NadeLaunch& p) {
  return {static_cast<const T*>(p.WT), static_cast<const T*>(p.c), static_cast<const T*>(p.V),
          static_cast<const T*>(p.b), p.order, p.D, p.H, p.K, p.bad_col};
}

// Warp index = row; whole warps return together, so the full-mask shuffles are safe.
#define AF_ROW_PROLOGUE                                              \
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; \
  const WarpLanes L{int64_t(threadIdx.x % kWarp)};                  \
  if (row >= B) return;

template <typename T, class Head>
__global__ void forward_kernel(nade_row::Params<T> p, int64_t B, const typename Head::X* x, T* log_prob, T* l,
                               void* scratch) {
  AF_ROW_PROLOGUE
  const int64_t P = Head::P(p.K);
  const Scratch<T> s = row_scratch<T>(scratch, B, p.H, P, row, L.lane());
  const T lp = nade_row::row_forward<T, Head>(p, x + row * p.D, s.a, s.h, l + row * p.D * P, L);
  if (L.lane() == 0) log_prob[row] = lp;
}

template <typename T, class Head>
__global__ void sample_kernel(nade_row::Params<T> p, int64_t B, const T* u, typename Head::X* x, T* log_prob,
                              void* scratch) {
  AF_ROW_PROLOGUE
  const int64_t P = Head::P(p.K);
  const Scratch<T> s = row_scratch<T>(scratch, B, p.H, P, row, L.lane());
  // The per-step outputs live in this lane's dl slot: every lane computes the same values.
  const T lp = nade_row::row_sample<T, Head>(p, u + row * p.D * Head::kU, x + row * p.D, s.a, s.h, s.dl, L);
  if (L.lane() == 0) log_prob[row] = lp;
}

template <typename T, class Head>
__global__ void backward_kernel(nade_row::Params<T> p, int64_t B, const typename Head::X* x, const T* l,
                                const T* grad, nade_row::Grads<T> g, void* scratch) {
  AF_ROW_PROLOGUE
  const int64_t P = Head::P(p.K);
  const Scratch<T> s = row_scratch<T>(scratch, B, p.H, P, row, L.lane());
  nade_row::row_backward<T, Head>(p, x + row * p.D, l + row * p.D * P, g.gout ? g.gout + row * p.D * P : nullptr,
                                  grad[row], g, g.dx ? g.dx + row * p.D : nullptr, s.a, s.h, s.acc, s.dl, L);
}

unsigned blocks_for(int64_t B) { return static_cast<unsigned>((B + kRowsPerBlock - 1) / kRowsPerBlock); }

template <typename T, template <typename> class Head>
cudaError_t launch(const NadeLaunch& p, int which, const void* in, const void* l, const void* grad, void* out0,
                   void* out1, const nade_row::Grads<T>* g) {
  using X = typename Head<T>::X;
  if (p.B == 0) return cudaSuccess;
  const dim3 grid(blocks_for(p.B)), block(kRowsPerBlock * kWarp);
  const nade_row::Params<T> prm = params<T>(p);
  if (which == 0)
    forward_kernel<T, Head<T>><<<grid, block, 0, p.stream>>>(prm, p.B, static_cast<const X*>(in),
                                                             static_cast<T*>(out0), static_cast<T*>(out1),
                                                             p.scratch);
  else if (which == 1)
    sample_kernel<T, Head<T>><<<grid, block, 0, p.stream>>>(prm, p.B, static_cast<const T*>(in),
                                                            static_cast<X*>(out0), static_cast<T*>(out1),
                                                            p.scratch);
  else
    backward_kernel<T, Head<T>><<<grid, block, 0, p.stream>>>(prm, p.B, static_cast<const X*>(in),
                                                              static_cast<const T*>(l),
                                                              static_cast<const T*>(grad), *g, p.scratch);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_kind(const NadeLaunch& p, int which, const void* in, const void* l, const void* grad,
                          void* out0, void* out1, const nade_row::Grads<T>* g) {
  cudaError_t e = cudaErrorInvalidValue;
  nade::visit_kind(p.kind, [&](auto tag) {
    e = launch<T, decltype(tag)::template Head>(p, which, in, l, grad, out0, out1, g);
  });
  return e;
}

template <typename T>
nade_row::Grads<T> grads(void* dWT, void* dc, void* dV, void* db, void* dx, const void* gout) {
  return {static_cast<T*>(dWT), static_cast<T*>(dc), static_cast<T*>(dV), static_cast<T*>(db),
          static_cast<T*>(dx), static_cast<const T*>(gout)};
}

}  // namespace

cudaError_t nade_forward(const NadeLaunch& p, const void* x, void* log_prob, void* l) {
  return p.is_double ? dispatch_kind<double>(p, 0, x, nullptr, nullptr, log_prob, l, nullptr)
                     : dispatch_kind<float>(p, 0, x, nullptr, nullptr, log_prob, l, nullptr);
}

cudaError_t nade_sample(const NadeLaunch& p, const void* u, void* x, void* log_prob) {
  return p.is_double ? dispatch_kind<double>(p, 1, u, nullptr, nullptr, x, log_prob, nullptr)
                     : dispatch_kind<float>(p, 1, u, nullptr, nullptr, x, log_prob, nullptr);
}

cudaError_t nade_backward(const NadeLaunch& p, const void* x, const void* l, const void* grad,
                          const void* grad_outputs, void* dWT, void* dc, void* dV, void* db, void* dx) {
  if (p.is_double) {
    const auto g = grads<double>(dWT, dc, dV, db, dx, grad_outputs);
    return dispatch_kind<double>(p, 2, x, l, grad, nullptr, nullptr, &g);
  }
  const auto g = grads<float>(dWT, dc, dV, db, dx, grad_outputs);
  return dispatch_kind<float>(p, 2, x, l, grad, nullptr, nullptr, &g);
}

}  // namespace cuda
}  // namespace af
