// Device helpers shared by the CUDA kernels (nvcc only, torch-free).
//
// Everything is in an unnamed namespace: each .cu gets its own copy of these
// small kernels, so no template kernel has to be shared across translation
// units.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernel_common.h"

namespace dartscc {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // elementwise and tile kernels
constexpr int kWarp = 32;

// --- conversions: explicit intrinsics, since torch builds with
// __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__.
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

// Round to nearest even, as static_cast does on the CPU.
template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// A reduced double to T through the accumulation type, as the CPU kernels'
// static_cast<scalar_t>(double) goes through float for the half types.
template <typename T>
__device__ __forceinline__ T from_double(double v) {
  return from_acc<T>(static_cast<acc_type<T>>(v));
}

// N elements loaded or stored as one 16-byte (or smaller) transaction.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// How many elements one 16-byte access holds.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The k pointers of a table into shared memory `sp`, by thread 0, with static
// indices: indexing a kernel-parameter table with a runtime index makes the
// compiler copy the whole table into every thread's local memory. The caller
// synchronises before reading `sp`.
template <typename T>
__device__ __forceinline__ void table_to_shared(const PtrTable<T>& table, int k, T** sp) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int m = 0; m < kMaxOps; ++m)
      if (m < k) sp[m] = table.p[m];
  }
}

// Sum over the block in a fixed order, so the result does not depend on
// timing; valid in thread 0. blockDim.x must be a multiple of 32, every thread
// must call it, and `smem` must hold 32 values. Ends with a barrier, so it can
// be called again with the same `smem`.
template <typename A>
__device__ A block_sum(A v, A* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? smem[lane] : A(0);
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  __syncthreads();
  return v;
}

// Blocks for a grid-stride loop over `work` items of one block each: enough to
// fill the device, never more than there is work.
inline cudaError_t grid_for(int64_t work, int threads, unsigned* grid) {
  int dev = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  const int64_t cap = static_cast<int64_t>(std::max(sms, 1)) * std::max(2048 / threads, 1);
  *grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(work, cap)));
  return cudaSuccess;
}

// out[r * k + m] = sum over t < per_row of partial[(r * per_row + t) * k + m]:
// the second, small pass of the deterministic weight-gradient reductions.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const double* __restrict__ partial, T* __restrict__ out, int64_t rows,
                           int64_t per_row, int k) {
  __shared__ double red[kWarp];
  for (int64_t b = blockIdx.x; b < rows * k; b += gridDim.x) {
    const int64_t r = b / k;
    const int m = static_cast<int>(b % k);
    double s = 0;
    for (int64_t t = threadIdx.x; t < per_row; t += blockDim.x) s += partial[(r * per_row + t) * k + m];
    s = block_sum(s, red);
    if (threadIdx.x == 0) out[b] = from_double<T>(s);
  }
}

template <typename T>
cudaError_t reduce_partials(const double* partial, T* out, int64_t rows, int64_t per_row, int k,
                            cudaStream_t stream) {
  if (rows * k == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(rows * k, kThreads, &grid);
  if (err != cudaSuccess) return err;
  reduce_partials_kernel<T><<<grid, kThreads, 0, stream>>>(partial, out, rows, per_row, k);
  return cudaGetLastError();
}

}  // namespace
}  // namespace cuda
}  // namespace dartscc
