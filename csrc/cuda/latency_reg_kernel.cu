// latency_reg on CUDA: small deterministic reductions (no atomics), summed in
// double as the CPU kernel does. The problem is tiny (N * E * k values), so
// the aim is few launches, not bandwidth.
#include "kernel_common.cuh"
#include "latency_reg_kernel.h"

namespace dartscc {
namespace cuda {
namespace {

// S[row, type(m)] (0 for 'none') for the block's row, in shared memory.
template <typename T>
__device__ void load_type_weights(const T* S, const LatRegParams& p, int64_t row, double* st) {
  if (threadIdx.x < p.k) {
    const int ty = p.types[threadIdx.x];
    st[threadIdx.x] = ty < 0 ? 0.0 : static_cast<double>(to_acc(S[(p.s_batched ? row : 0) * p.t + ty]));
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ w, const T* __restrict__ L, const T* __restrict__ S, T* __restrict__ out,
                   const LatRegParams p) {
  __shared__ double red[kWarp];
  __shared__ double st[kMaxOps];
  const int64_t ek = p.e * p.k;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    load_type_weights(S, p, r, st);
    const T* wr = w + (p.w_batched ? r : 0) * ek;
    double acc = 0;
    for (int64_t i = threadIdx.x; i < ek; i += blockDim.x)
      acc += st[i % p.k] * static_cast<double>(to_acc(L[i])) * static_cast<double>(to_acc(wr[i]));
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) out[r] = from_double<T>(acc);
  }
}

// P[r, m] = sum_e L[e, m] * w[r, e, m] for the nw rows of w; then
// csum[m] = sum_r g[r] * S[r, type(m)] in the blocks past them.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sums_kernel(const T* __restrict__ grad, const T* __restrict__ w, const T* __restrict__ L,
                const T* __restrict__ S, double* __restrict__ P, double* __restrict__ csum, const LatRegParams p) {
  __shared__ double red[kWarp];
  const int64_t nw = p.w_batched ? p.rows : 1, ek = p.e * p.k;
  for (int64_t b = blockIdx.x; b < (nw + 1) * p.k; b += gridDim.x) {
    const int64_t r = b / p.k;
    const int m = static_cast<int>(b % p.k);
    double acc = 0;
    if (r < nw) {
      const T* wr = w + r * ek;
      for (int64_t e = threadIdx.x; e < p.e; e += blockDim.x)
        acc += static_cast<double>(to_acc(L[e * p.k + m])) * static_cast<double>(to_acc(wr[e * p.k + m]));
    } else if (p.types[m] >= 0) {
      for (int64_t q = threadIdx.x; q < p.rows; q += blockDim.x)
        acc += static_cast<double>(to_acc(grad[q])) *
               static_cast<double>(to_acc(S[(p.s_batched ? q : 0) * p.t + p.types[m]]));
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) (r < nw ? P[b] : csum[m]) = acc;
  }
}

// grad_w[r, e, m] = c[r, m] * L[e, m] and grad_L[e, m] = sum_r c[r, m] * w[r, e, m],
// with c[r, m] = g[r] * S[r, type(m)] (csum when w is shared).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_wl_kernel(const T* __restrict__ grad, const T* __restrict__ w, const T* __restrict__ L,
                   const T* __restrict__ S, const double* __restrict__ csum, T* __restrict__ grad_w,
                   T* __restrict__ grad_L, const LatRegParams p) {
  const int64_t ek = p.e * p.k, nw = p.w_batched ? p.rows : 1;
  const int64_t n_w = nw * ek;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_w + ek;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < n_w) {
      const int64_t r = i / ek, j = i % ek;
      const int m = static_cast<int>(j % p.k);
      double c = 0;
      if (p.types[m] >= 0)
        c = p.w_batched ? static_cast<double>(to_acc(grad[r])) *
                              static_cast<double>(to_acc(S[(p.s_batched ? r : 0) * p.t + p.types[m]]))
                        : csum[m];
      grad_w[i] = from_double<T>(c * static_cast<double>(to_acc(L[j])));
    } else {
      const int64_t j = i - n_w;
      const int m = static_cast<int>(j % p.k);
      double acc = 0;
      if (p.types[m] >= 0) {
        if (p.w_batched) {
          for (int64_t r = 0; r < p.rows; ++r)
            acc += static_cast<double>(to_acc(grad[r])) *
                   static_cast<double>(to_acc(S[(p.s_batched ? r : 0) * p.t + p.types[m]])) *
                   static_cast<double>(to_acc(w[r * ek + j]));
        } else {
          acc = csum[m] * static_cast<double>(to_acc(w[j]));
        }
      }
      grad_L[j] = from_double<T>(acc);
    }
  }
}

// grad_S[s, t] = sum over the rows r that use S row s of g[r] * sum_{m: type t} P[r, m].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_s_kernel(const T* __restrict__ grad, const double* __restrict__ P, T* __restrict__ grad_S,
                  const LatRegParams p) {
  __shared__ double red[kWarp];
  const int64_t ns = p.s_batched ? p.rows : 1;
  for (int64_t b = blockIdx.x; b < ns; b += gridDim.x) {
    double acc[kMaxOps];  // one per type; kMaxTypes <= kMaxOps
#pragma unroll
    for (int t = 0; t < kMaxOps; ++t) acc[t] = 0;
    const int64_t r0 = p.s_batched ? b : 0, r1 = p.s_batched ? b + 1 : p.rows;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
      const double g = static_cast<double>(to_acc(grad[r]));
      const double* pr = P + (p.w_batched ? r : 0) * p.k;
      for (int m = 0; m < p.k; ++m)
        if (p.types[m] >= 0) acc[p.types[m]] += g * pr[m];
    }
    for (int t = 0; t < p.t; ++t) {
      const double v = block_sum(acc[t], red);
      if (threadIdx.x == 0) grad_S[b * p.t + t] = from_double<T>(v);
    }
  }
}

}  // namespace

template <typename T>
cudaError_t latency_reg_forward(const T* w, const T* L, const T* S, T* out, const LatRegParams& p,
                                cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(p.rows, kThreads, &grid);
  if (err != cudaSuccess) return err;
  forward_kernel<T><<<grid, kThreads, 0, stream>>>(w, L, S, out, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t latency_reg_backward(const T* grad, const T* w, const T* L, const T* S, T* grad_w, T* grad_L,
                                 T* grad_S, double* scratch, const LatRegParams& p, cudaStream_t stream) {
  const int64_t nw = p.w_batched ? p.rows : 1, ns = p.s_batched ? p.rows : 1;
  double* P = scratch;
  double* csum = scratch + nw * p.k;
  unsigned grid = 0;
  cudaError_t err = grid_for((nw + 1) * p.k, kThreads, &grid);
  if (err != cudaSuccess) return err;
  sums_kernel<T><<<grid, kThreads, 0, stream>>>(grad, w, L, S, P, csum, p);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const int64_t elems = (nw + 1) * p.e * p.k;
  if (elems > 0) {
    err = grid_for((elems + kThreads - 1) / kThreads, kThreads, &grid);
    if (err != cudaSuccess) return err;
    grad_wl_kernel<T><<<grid, kThreads, 0, stream>>>(grad, w, L, S, csum, grad_w, grad_L, p);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  err = grid_for(ns, kThreads, &grid);
  if (err != cudaSuccess) return err;
  grad_s_kernel<T><<<grid, kThreads, 0, stream>>>(grad, P, grad_S, p);
  return cudaGetLastError();
}

#define DARTSCC_INSTANTIATE(T)                                                                                  \
  template cudaError_t latency_reg_forward<T>(const T*, const T*, const T*, T*, const LatRegParams&,           \
                                              cudaStream_t);                                                   \
  template cudaError_t latency_reg_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, double*,    \
                                               const LatRegParams&, cudaStream_t);
DARTSCC_INSTANTIATE(float)
DARTSCC_INSTANTIATE(double)
DARTSCC_INSTANTIATE(__half)
DARTSCC_INSTANTIATE(__nv_bfloat16)
#undef DARTSCC_INSTANTIATE

}  // namespace cuda
}  // namespace dartscc
