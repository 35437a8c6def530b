// CUDA masked linear layer: one tiled GEMM kernel for the forward product and
// the two backward products, on degree-sorted operands (docs/DESIGN.md section 4).
//
// A block computes a kTileM x kTileN tile of C with 256 threads (a 16 x 16 grid,
// 4 x 4 outputs per thread, rows ty + 16 i, columns tx + 16 j), stepping over
// kTileK-deep shared-memory tiles of A and B with fp32 (or fp64) accumulation.
// Every decision about the mask is made by ml::MaskedProduct (masked_linear_math.h),
// which the CPU tile-reference runs too: the k range an output tile needs (zero
// B tiles outside it are never visited), the kind of each B tile (zero: skipped;
// ones: loaded without a compare; mixed: the per-element degree compare on load),
// the kind of each C tile (dW: a zero tile is written as zeros with no k loop),
// and the epilogue (bias + activation, or the dW mask). Tile kinds are the same
// for every thread of a block, so the skips never split a __syncthreads.
#include "masked_linear/masked_linear_cuda.h"
#include "masked_linear/masked_linear_math.h"

namespace af {
namespace cuda {
namespace {

namespace ml = af::ml;

constexpr int kSide = 16;                  // threads per side of the block's thread grid
constexpr int kThreads = kSide * kSide;    // 256
constexpr int kPad = 4;                    // shared-memory row padding (bank spread, 16-byte rows)
constexpr int kMicroM = ml::kTileM / kSide;
constexpr int kMicroN = ml::kTileN / kSide;
static_assert(ml::kTileM % kSide == 0 && ml::kTileN % kSide == 0, "tile sides must be multiples of 16");

template <typename T>
__global__ void __launch_bounds__(kThreads) masked_product_kernel(const ml::MaskedProduct<T> p, T* c) {
  __shared__ T As[ml::kTileK][ml::kTileM + kPad];
  __shared__ T Bs[ml::kTileK][ml::kTileN + kPad];
  const int tid = static_cast<int>(threadIdx.x), tx = tid % kSide, ty = tid / kSide;
  const int64_t m0 = int64_t(blockIdx.x) * ml::kTileM, n0 = int64_t(blockIdx.y) * ml::kTileN;
  const int64_t m1 = m0 + ml::kTileM < p.M ? m0 + ml::kTileM : p.M;
  const int64_t n1 = n0 + ml::kTileN < p.N ? n0 + ml::kTileN : p.N;
  const ml::TileKind c_kind = p.c_tile(m0, m1, n0, n1);
  const bool a_kc = p.a_ks == 1, b_kc = p.b_ks == 1;

  T acc[kMicroM][kMicroN];
#pragma unroll
  for (int i = 0; i < kMicroM; ++i)
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) acc[i][j] = T(0);

  if (c_kind != ml::kTileZero) {
    int64_t k_begin, k_end;
    p.k_range(n0, n1, &k_begin, &k_end);
    for (int64_t k0 = k_begin; k0 < k_end; k0 += ml::kTileK) {
      const int64_t k1 = k0 + ml::kTileK < p.K ? k0 + ml::kTileK : p.K;
      const ml::TileKind b_kind = p.b_tile(n0, n1, k0, k1);
      if (b_kind == ml::kTileZero) continue;  // uniform over the block
      for (int e = tid; e < ml::kTileM * ml::kTileK; e += kThreads) {
        int r, k;
        ml::tile_slot(e, a_kc, ml::kTileM, &r, &k);
        As[k][r] = p.load_a(m0 + r, k0 + k);
      }
      for (int e = tid; e < ml::kTileN * ml::kTileK; e += kThreads) {
        int r, k;
        ml::tile_slot(e, b_kc, ml::kTileN, &r, &k);
        Bs[k][r] = p.load_b(b_kind, n0 + r, k0 + k);
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < ml::kTileK; ++k) {
        T av[kMicroM], bv[kMicroN];
#pragma unroll
        for (int i = 0; i < kMicroM; ++i) av[i] = As[k][ty + kSide * i];
#pragma unroll
        for (int j = 0; j < kMicroN; ++j) bv[j] = Bs[k][tx + kSide * j];
#pragma unroll
        for (int i = 0; i < kMicroM; ++i)
#pragma unroll
          for (int j = 0; j < kMicroN; ++j) acc[i][j] += av[i] * bv[j];
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
    const int64_t m = m0 + ty + kSide * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) {
      const int64_t n = n0 + tx + kSide * j;
      if (n < p.N) c[m * p.N + n] = p.epilogue(c_kind, m, n, acc[i][j]);
    }
  }
}

// g = grad_y * act'(pre), element-wise (grid-stride).
template <typename T>
__global__ void pre_grad_kernel(const T* grad_y, const T* y, T* g, int64_t n, int64_t act) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    g[e] = ml::pre_activation_grad(grad_y[e], y[e], act);
}

constexpr int kColThreads = 32, kRowThreads = 32;

// db[o] = sum_b g[b, o]: a block of 32 columns x 32 row lanes, fixed order (deterministic).
template <typename T>
__global__ void column_sum_kernel(const T* g, T* db, int64_t B, int64_t O) {
  __shared__ T part[kRowThreads][kColThreads + 1];
  const int64_t o = int64_t(blockIdx.x) * kColThreads + threadIdx.x;
  T s = T(0);
  if (o < O)
    for (int64_t b = threadIdx.y; b < B; b += kRowThreads) s += g[b * O + o];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && o < O) {
    T t = T(0);
    for (int r = 0; r < kRowThreads; ++r) t += part[r][threadIdx.x];
    db[o] = t;
  }
}

unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

template <typename T>
cudaError_t run_product(const ml::MaskedProduct<T>& prm, T* c, cudaStream_t stream) {
  if (prm.M == 0 || prm.N == 0) return cudaSuccess;
  const int64_t gy = (prm.N + ml::kTileN - 1) / ml::kTileN;
  if (gy > 65535) return cudaErrorInvalidConfiguration;  // N > 4M columns
  const dim3 grid(ceil_div(prm.M, ml::kTileM), static_cast<unsigned>(gy));
  masked_product_kernel<T><<<grid, kThreads, 0, stream>>>(prm, c);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_product(const MaskedLinearLaunch& p, int which, const void* a, const void* b, const void* bias,
                           void* c) {
  const auto prm = ml::masked_product<T>(which, p.B, p.O, p.I, static_cast<const T*>(a), static_cast<const T*>(b),
                                         static_cast<const T*>(bias), p.in_sorted, p.out_sorted, p.strict, p.act);
  return run_product<T>(prm, static_cast<T*>(c), p.stream);
}

template <typename T>
cudaError_t launch_grad_pre(const MaskedLinearLaunch& p, const void* grad_y, const void* y, void* g, void* db) {
  const int64_t n = p.B * p.O;
  const T* gsrc = static_cast<const T*>(grad_y);
  if (p.act != ml::kNone && n > 0) {
    const unsigned blocks = static_cast<unsigned>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    pre_grad_kernel<T><<<blocks, 256, 0, p.stream>>>(gsrc, static_cast<const T*>(y), static_cast<T*>(g), n,
                                                       p.act);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    gsrc = static_cast<const T*>(g);
  } else if (g != nullptr && g != grad_y && n > 0) {
    const cudaError_t e = cudaMemcpyAsync(g, grad_y, n * sizeof(T), cudaMemcpyDeviceToDevice, p.stream);
    if (e != cudaSuccess) return e;
  }
  if (db == nullptr || p.O == 0) return cudaSuccess;
  column_sum_kernel<T><<<ceil_div(p.O, kColThreads), dim3(kColThreads, kRowThreads), 0, p.stream>>>(
      gsrc, static_cast<T*>(db), p.B, p.O);
  return cudaGetLastError();
}

}  // namespace

cudaError_t masked_linear_forward(const MaskedLinearLaunch& p, const void* x_s, const void* w_s,
                                  const void* bias_s, void* y_s) {
  return p.is_double ? launch_product<double>(p, ml::kForward, x_s, w_s, bias_s, y_s)
                     : launch_product<float>(p, ml::kForward, x_s, w_s, bias_s, y_s);
}

cudaError_t masked_linear_grad_pre(const MaskedLinearLaunch& p, const void* grad_y_s, const void* y_s, void* g,
                                   void* db_s) {
  return p.is_double ? launch_grad_pre<double>(p, grad_y_s, y_s, g, db_s)
                     : launch_grad_pre<float>(p, grad_y_s, y_s, g, db_s);
}

cudaError_t masked_linear_grad_input(const MaskedLinearLaunch& p, const void* g, const void* w_s, void* dx_s) {
  return p.is_double ? launch_product<double>(p, ml::kGradInput, g, w_s, nullptr, dx_s)
                     : launch_product<float>(p, ml::kGradInput, g, w_s, nullptr, dx_s);
}

cudaError_t masked_linear_grad_weight(const MaskedLinearLaunch& p, const void* g, const void* x_s, void* dw_s) {
  return p.is_double ? launch_product<double>(p, ml::kGradWeight, g, x_s, nullptr, dw_s)
                     : launch_product<float>(p, ml::kGradWeight, g, x_s, nullptr, dw_s);
}

}  // namespace cuda
}  // namespace af
