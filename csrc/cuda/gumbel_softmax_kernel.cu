// gumbel_softmax forward and backward: one thread per row. The rows are short
// (k candidate ops) and few (edges x samples), so this is latency-bound and a
// thread per row keeps the arithmetic, and so the result, the CPU kernel's:
// noise in double, cast to the accumulation type, the same max/argmax scan.
// The noise is recomputed in each pass rather than stored, so any k works.
#include "../common/philox.h"
#include "gumbel_softmax_kernel.h"
#include "kernel_common.cuh"

namespace dartscc {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ acc_type<T> perturbed(const T* l, uint64_t i, uint64_t seed, acc_type<T> tau) {
  using A = acc_type<T>;
  return (to_acc(l[i]) + static_cast<A>(gumbel_noise(seed, i))) / tau;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ l, T* __restrict__ y, T* __restrict__ soft, int64_t rows, int64_t k,
                   uint64_t seed, double tau_d, bool hard) {
  using A = acc_type<T>;
  const A tau = static_cast<A>(tau_d);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t base = static_cast<uint64_t>(r * k);
    A zmax = -static_cast<A>(INFINITY);
    int64_t arg = 0;
    for (int64_t j = 0; j < k; ++j) {
      const A z = perturbed(l, base + j, seed, tau);
      if (z > zmax || isnan(z)) {  // as the CPU kernel: a later NaN takes over
        zmax = z;
        arg = j;
      }
    }
    A sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += exp(perturbed(l, base + j, seed, tau) - zmax);
    for (int64_t j = 0; j < k; ++j) {
      const A p = exp(perturbed(l, base + j, seed, tau) - zmax) / sum;
      soft[base + j] = from_acc<T>(p);
      y[base + j] = hard && !isnan(p) ? from_acc<T>(j == arg ? A(1) : A(0)) : from_acc<T>(p);  // NaN rows stay NaN
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ g, const T* __restrict__ s, T* __restrict__ out, int64_t rows, int64_t k,
                    double inv_tau_d) {
  using A = acc_type<T>;
  const A inv_tau = static_cast<A>(inv_tau_d);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = r * k;
    A dot = 0;
    for (int64_t j = 0; j < k; ++j) dot += to_acc(g[base + j]) * to_acc(s[base + j]);
    for (int64_t j = 0; j < k; ++j) {
      const A sj = to_acc(s[base + j]);
      out[base + j] = from_acc<T>(sj * (to_acc(g[base + j]) - dot) * inv_tau);
    }
  }
}

}  // namespace

template <typename T>
cudaError_t gumbel_softmax_forward(const T* logits, T* y, T* soft, int64_t rows, int64_t k, uint64_t seed,
                                   double tau, bool hard, cudaStream_t stream) {
  if (rows * k == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for((rows + kThreads - 1) / kThreads, kThreads, &grid);
  if (err != cudaSuccess) return err;
  forward_kernel<T><<<grid, kThreads, 0, stream>>>(logits, y, soft, rows, k, seed, tau, hard);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gumbel_softmax_backward(const T* grad, const T* soft, T* out, int64_t rows, int64_t k, double tau,
                                    cudaStream_t stream) {
  if (rows * k == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for((rows + kThreads - 1) / kThreads, kThreads, &grid);
  if (err != cudaSuccess) return err;
  // 1 / tau in double, then cast: the CPU kernel's inv_tau.
  backward_kernel<T><<<grid, kThreads, 0, stream>>>(grad, soft, out, rows, k, 1.0 / tau);
  return cudaGetLastError();
}

#define DARTSCC_INSTANTIATE(T)                                                                           \
  template cudaError_t gumbel_softmax_forward<T>(const T*, T*, T*, int64_t, int64_t, uint64_t, double, bool, \
                                                 cudaStream_t);                                          \
  template cudaError_t gumbel_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, double, cudaStream_t);
DARTSCC_INSTANTIATE(float)
DARTSCC_INSTANTIATE(double)
DARTSCC_INSTANTIATE(__half)
DARTSCC_INSTANTIATE(__nv_bfloat16)
#undef DARTSCC_INSTANTIATE

}  // namespace cuda
}  // namespace dartscc
