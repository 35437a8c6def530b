// One-launch CUDA MADE / FVSBN sampler (docs/DESIGN.md section 4): every hidden unit
// is computed once, at the step its degree's inputs are drawn (made_math.h).
//
// A block owns kNS samples at a time (grid-stride over sample chunks) and
// walks the D steps. Its scratch holds the drawn inputs and every layer's
// activations unit-major, kNS samples side by side ([unit][kNS]): one weight
// load feeds kNS multiply-adds and consecutive lanes read consecutive units.
// At step t a layer's run of degree t (rows of the sorted weight) reads a
// prefix of the previous layer's sorted units; the run's rows are spread over
// the warps, each row's prefix split into `segs` segments when the run has
// fewer rows than warps, each warp reducing its segment with shuffles and the
// segments summed in a fixed order (deterministic). The P output rows of
// dimension order[t] go to shared memory and one thread per sample applies the
// head rule (made::draw, shared with the CPU sampler).
#include "made/made_cuda.h"

#include <algorithm>

namespace af {
namespace cuda {
namespace {

constexpr int kNS = 8;      // samples per chunk
constexpr int kWarps = 8;   // warps per block
constexpr int kThreads = 32 * kWarps;

enum Rows : int { kHiddenRows = 0, kOutputRows = 1, kDirectRows = 2 };

// The dot products of `rows` consecutive weight rows with the first `cnt` units of
// `in` ([unit][kNS]), finished by `mode`:
//   kHiddenRows: out[k][s] = act(sum + bias[k] + ctx[s][k] + skip[k][s])  (scratch; skip, ctx
//                may be null, act may be kNone), and copy[k][s] = copy_act(out[k][s]) if copy
//   kOutputRows: out[k][s] = sum + bias[k]                    (shared params)
//   kDirectRows: out[k][s] += sum                              (shared params)
template <typename T>
__device__ void block_rows(int mode, const T* __restrict__ w, int64_t ldw, int64_t rows, int64_t cnt,
                           const T* in, const T* __restrict__ bias, const T* __restrict__ ctx, int64_t ctx_ld,
                           int64_t ns, int64_t act, T* out, T* partial, const T* skip = nullptr,
                           T* copy = nullptr, int64_t copy_act = ml::kNone) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int segs = rows >= kWarps ? 1 : kWarps / static_cast<int>(rows);
  const int per_batch = kWarps / segs;  // rows per batch
  const int64_t seg_len = (cnt + segs - 1) / segs;
  for (int64_t k0 = 0; k0 < rows; k0 += per_batch) {
    const int64_t k = k0 + warp / segs;
    const int seg = warp % segs;
    if (warp / segs < per_batch && k < rows) {
      T acc[kNS] = {};
      const T* wk = w + k * ldw;
      const int64_t j1 = min(cnt, (seg + 1) * seg_len);
      for (int64_t j = seg * seg_len + lane; j < j1; j += 32) {
        const T wv = wk[j];
        for (int s = 0; s < kNS; ++s) acc[s] += wv * in[j * kNS + s];
      }
      for (int s = 0; s < kNS; ++s) {
        T v = acc[s];
        for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0) partial[warp * kNS + s] = v;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < per_batch * kNS; i += kThreads) {
      const int u = i / kNS, s = i % kNS;
      const int64_t kk = k0 + u;
      if (kk >= rows) continue;
      T v = T(0);
      for (int g = 0; g < segs; ++g) v += partial[(u * segs + g) * kNS + s];  // fixed order
      if (mode == kDirectRows) {
        out[kk * kNS + s] += v;
      } else {
        v += bias[kk];
        if (mode == kHiddenRows) {
          if (ctx != nullptr && s < ns) v += ctx[s * ctx_ld + kk];
          if (skip != nullptr) v += skip[kk * kNS + s];
          v = ml::activate(v, act);
          if (copy != nullptr) copy[kk * kNS + s] = ml::activate(v, copy_act);
        }
        out[kk * kNS + s] = v;
      }
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) made_sample_kernel(made::Operands op, T* scratch, T* x_out,
                                                               int64_t* xi_out, T* lp_out) {
  extern __shared__ unsigned char smem_raw[];
  T* partial = reinterpret_cast<T*>(smem_raw);  // [kWarps][kNS]
  T* params = partial + kWarps * kNS;            // [P][kNS]
  const int64_t D = op.D, L = op.L, P = op.P, Kin = op.Kin, K = op.K;
  // scratch rows: [inputs | layer 0 | ... | layer L-1 | act(layer l) for each l whose consumer reads it]
  int64_t width = D * Kin;
  int64_t offset[made::kMaxLayers], copy_offset[made::kMaxLayers];
  for (int64_t l = 0; l < L; ++l) {
    offset[l] = width;
    width += op.units[l];
  }
  for (int64_t l = 0; l < L; ++l) {
    copy_offset[l] = made::copy_activated(op, l) ? width : -1;
    if (copy_offset[l] >= 0) width += op.units[l];
  }
  T* A = scratch + static_cast<int64_t>(blockIdx.x) * width * kNS;
  const T* noise = static_cast<const T*>(op.noise);
  const T* zs = static_cast<const T*>(op.z);
  const int64_t chunks = (op.n + kNS - 1) / kNS;
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const int64_t s0 = c * kNS, ns = min(static_cast<int64_t>(kNS), op.n - s0);
    for (int64_t i = threadIdx.x; i < D * Kin * kNS; i += kThreads) A[i] = T(0);  // one-hot inputs start at 0
    int64_t cursor[made::kMaxLayers] = {};
    T lp = T(0);
    __syncthreads();
    for (int64_t t = 0; t < D; ++t) {
      const T* prev = A;
      int64_t cnt = t * Kin;  // inputs of degree <= t: the dimensions drawn before step t
      for (int64_t l = 0; l < L; ++l) {
        const int64_t begin = cursor[l], end = made::run_end(op.deg[l], op.units[l], begin, t);
        cursor[l] = end;
        if (end > begin) {
          const T* ctx = l == 0 && op.ctx_h ? static_cast<const T*>(op.ctx_h) + s0 * op.units[0] + begin : nullptr;
          const int64_t flags = op.flags[l];
          const T* skip = flags & made::kSkip ? A + (offset[l - 2] + begin) * kNS : nullptr;  // the block's input
          T* copy = copy_offset[l] >= 0 ? A + (copy_offset[l] + begin) * kNS : nullptr;
          block_rows<T>(kHiddenRows, static_cast<const T*>(op.w[l]) + begin * op.ldw[l], op.ldw[l], end - begin,
                        cnt, prev, static_cast<const T*>(op.b[l]) + begin, ctx, op.units[0], ns,
                        flags & made::kActOut ? op.activation : ml::kNone, A + (offset[l] + begin) * kNS, partial,
                        skip, copy, op.activation);
        }
        prev = A + (copy_offset[l] >= 0 ? copy_offset[l] : offset[l]) * kNS;
        cnt = end;
      }
      if (L > 0) prev = A + offset[L - 1] * kNS;  // the output layer reads the last layer itself
      const int64_t row = t * P;  // ((W h + b) + direct) + context, the reference's association
      block_rows<T>(kOutputRows, static_cast<const T*>(op.w[L]) + row * op.ldw[L], op.ldw[L], P, cnt, prev,
                    static_cast<const T*>(op.b[L]) + row, nullptr, 0, ns, ml::kNone, params, partial);
      if (op.direct) {
        block_rows<T>(kDirectRows, static_cast<const T*>(op.direct) + row * op.ld_direct, op.ld_direct, P,
                      t * Kin, A, nullptr, nullptr, 0, ns, ml::kNone, params, partial);
      }
      if (op.ctx_o) {
        const T* ctx = static_cast<const T*>(op.ctx_o);
        for (int64_t i = threadIdx.x; i < P * ns; i += kThreads) {
          params[(i / ns) * kNS + i % ns] += ctx[(s0 + i % ns) * D * P + row + i / ns];
        }
        __syncthreads();
      }
      const int64_t s = threadIdx.x;
      if (s < ns) {
        const int64_t nd = (s0 + s) * D + op.order[t];
        T xv = T(0);
        int64_t xk = 0;
        lp += made::draw(op.head, params + s, kNS, K, noise + (op.head == made::kGaussian ? 2 * nd : nd),
                         zs ? zs[nd] : T(0), &xv, &xk);
        if (op.head == made::kCategorical) {
          A[(t * K + xk) * kNS + s] = T(1);
          xi_out[nd] = xk;
        } else {
          A[t * kNS + s] = xv;
          x_out[nd] = xv;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x < ns) lp_out[s0 + threadIdx.x] = lp;
  }
}

// Resident blocks only (about 3 per SM at 256 threads): the scratch is per block,
// so this also bounds it (it grows with D*Kin + hidden units, not with n).
int64_t grid_size(const made::Operands& op) {
  const int64_t chunks = (op.n + kNS - 1) / kNS;
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    sms = 132;
  }
  return std::max<int64_t>(1, std::min<int64_t>(chunks, 4 * static_cast<int64_t>(sms)));
}

int64_t scratch_width(const made::Operands& op) {
  int64_t width = op.D * op.Kin;
  for (int64_t l = 0; l < op.L; ++l) width += op.units[l] * (made::copy_activated(op, l) ? 2 : 1);
  return width;
}

size_t shared_bytes(const made::Operands& op, bool is_double) {
  return static_cast<size_t>(kWarps * kNS + op.P * kNS) * (is_double ? sizeof(double) : sizeof(float));
}

template <typename T>
cudaError_t launch(const MadeSampleLaunch& p) {
  const size_t smem = shared_bytes(p.op, sizeof(T) == sizeof(double));
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(made_sample_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const bool categorical = p.op.head == made::kCategorical;
  made_sample_kernel<T><<<static_cast<unsigned>(grid_size(p.op)), kThreads, smem, p.stream>>>(
      p.op, static_cast<T*>(p.scratch), categorical ? nullptr : static_cast<T*>(p.x),
      categorical ? static_cast<int64_t*>(p.x) : nullptr, static_cast<T*>(p.log_prob));
  return cudaGetLastError();
}

}  // namespace

int64_t made_sample_scratch_elements(const made::Operands& op) { return grid_size(op) * scratch_width(op) * kNS; }

int64_t made_sample_shared_bytes(const made::Operands& op, bool is_double) {
  return static_cast<int64_t>(shared_bytes(op, is_double));
}

cudaError_t made_sample(const MadeSampleLaunch& p) {
  if (p.op.n == 0) return cudaSuccess;
  return p.is_double ? launch<double>(p) : launch<float>(p);
}

}  // namespace cuda
}  // namespace af
