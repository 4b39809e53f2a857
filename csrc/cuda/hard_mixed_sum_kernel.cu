// hard_mixed_sum forward and backward: a copy with a scale, so tiles of kTile
// elements of one sample, the sample's op, weight and source row looked up
// once per tile by one thread into shared memory. The backward's two sums per
// sample (the dot with the drawn output, the plain sum of grad) go through
// per-tile partials, reduced in a fixed order: deterministic, no atomics.
#include "hard_mixed_sum_kernel.h"
#include "kernel_common.cuh"

namespace dartscc {
namespace cuda {
namespace {

constexpr int64_t kTile = 4096;

__host__ __device__ inline int64_t tiles_per_row(const HardSumShape& s) { return (s.inner + kTile - 1) / kTile; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(PtrTable<const T> o, const T* __restrict__ w, const int64_t* __restrict__ ix,
                   const int64_t* __restrict__ pos, T* __restrict__ y, HardSumShape s) {
  using A = acc_type<T>;
  __shared__ const T* so[kMaxOps];
  __shared__ const T* src;
  __shared__ A wm, rest;
  table_to_shared(o, s.k, so);
  const int64_t per_row = tiles_per_row(s);
  int64_t loaded = -1;
  for (int64_t t = blockIdx.x; t < s.n * per_row; t += gridDim.x) {
    const int64_t row = t / per_row;
    if (row != loaded) {
      __syncthreads();  // nobody still reads the previous sample's values
      if (threadIdx.x == 0) {
        const int64_t m = ix[row];
        const T* wn = w + (s.per_sample ? row * s.k : 0);
        A r = 0;
        for (int j = 0; j < s.k; ++j)
          if (j != m) r += to_acc(wn[j]);
        rest = r;
        wm = to_acc(wn[m]);
        src = so[m] + pos[row] * s.inner;
      }
      __syncthreads();
      loaded = row;
    }
    const int64_t begin = (t - row * per_row) * kTile, end = min(begin + kTile, s.inner);
    T* yr = y + row * s.inner;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) yr[i] = from_acc<T>(wm * to_acc(src[i]) + rest);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ g, PtrTable<const T> o, PtrTable<T> go, const T* __restrict__ w,
                    const int64_t* __restrict__ ix, const int64_t* __restrict__ pos, double* __restrict__ partial,
                    HardSumShape s) {
  using A = acc_type<T>;
  __shared__ const T* so[kMaxOps];
  __shared__ T* sgo[kMaxOps];
  __shared__ const T* src;
  __shared__ T* dst;
  __shared__ A wm;
  __shared__ double red[kWarp];
  table_to_shared(o, s.k, so);
  table_to_shared(go, s.k, sgo);
  const int64_t per_row = tiles_per_row(s);
  int64_t loaded = -1;
  for (int64_t t = blockIdx.x; t < s.n * per_row; t += gridDim.x) {
    const int64_t row = t / per_row;
    if (row != loaded) {
      __syncthreads();
      if (threadIdx.x == 0) {
        const int64_t m = ix[row];
        wm = to_acc(w[(s.per_sample ? row * s.k : 0) + m]);
        src = so[m] + pos[row] * s.inner;
        dst = sgo[m] + pos[row] * s.inner;
      }
      __syncthreads();
      loaded = row;
    }
    const int64_t begin = (t - row * per_row) * kTile, end = min(begin + kTile, s.inner);
    const T* gr = g + row * s.inner;
    A dot = 0, sum = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const A gi = to_acc(gr[i]);
      dst[i] = from_acc<T>(wm * gi);
      dot += gi * to_acc(src[i]);
      sum += gi;
    }
    const double dot_total = block_sum(static_cast<double>(dot), red);
    const double sum_total = block_sum(static_cast<double>(sum), red);
    if (threadIdx.x == 0) {
      partial[2 * t] = dot_total;
      partial[2 * t + 1] = sum_total;
    }
  }
}

// grad_weights[r, j]: over the tiles of sample r (of every sample for [k]
// weights), the tile's dot where j is the sample's op, else its plain sum.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const double* __restrict__ partial, const int64_t* __restrict__ ix, T* __restrict__ gw,
                  HardSumShape s) {
  __shared__ double red[kWarp];
  const int64_t per_row = tiles_per_row(s), out_rows = s.per_sample ? s.n : 1;
  for (int64_t b = blockIdx.x; b < out_rows * s.k; b += gridDim.x) {
    const int64_t r = b / s.k, j = b % s.k;
    const int64_t t0 = s.per_sample ? r * per_row : 0, t1 = s.per_sample ? (r + 1) * per_row : s.n * per_row;
    double acc = 0;
    for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) acc += partial[2 * t + (ix[t / per_row] == j ? 0 : 1)];
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) gw[b] = from_double<T>(acc);
  }
}

}  // namespace

template <typename T>
cudaError_t hard_mixed_sum_forward(const PtrTable<const T>& outputs, const T* weights, const int64_t* index,
                                   const int64_t* pos, T* y, const HardSumShape& s, cudaStream_t stream) {
  const int64_t tiles = s.n * tiles_per_row(s);
  if (tiles == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(tiles, kThreads, &grid);
  if (err != cudaSuccess) return err;
  forward_kernel<T><<<grid, kThreads, 0, stream>>>(outputs, weights, index, pos, y, s);
  return cudaGetLastError();
}

int64_t hard_mixed_sum_backward_workspace(const HardSumShape& s) { return 2 * s.n * tiles_per_row(s); }

template <typename T>
cudaError_t hard_mixed_sum_backward(const T* grad, const PtrTable<const T>& outputs, const T* weights,
                                    const int64_t* index, const int64_t* pos, const PtrTable<T>& grad_outputs,
                                    T* grad_weights, double* workspace, const HardSumShape& s, cudaStream_t stream) {
  const int64_t tiles = s.n * tiles_per_row(s);
  if (tiles == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(tiles, kThreads, &grid);
  if (err != cudaSuccess) return err;
  backward_kernel<T><<<grid, kThreads, 0, stream>>>(grad, outputs, grad_outputs, weights, index, pos, workspace, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = grid_for((s.per_sample ? s.n : 1) * s.k, kThreads, &grid);
  if (err != cudaSuccess) return err;
  reduce_kernel<T><<<grid, kThreads, 0, stream>>>(workspace, index, grad_weights, s);
  return cudaGetLastError();
}

#define DARTSCC_INSTANTIATE(T)                                                                                  \
  template cudaError_t hard_mixed_sum_forward<T>(const PtrTable<const T>&, const T*, const int64_t*,            \
                                                 const int64_t*, T*, const HardSumShape&, cudaStream_t);        \
  template cudaError_t hard_mixed_sum_backward<T>(const T*, const PtrTable<const T>&, const T*, const int64_t*, \
                                                  const int64_t*, const PtrTable<T>&, T*, double*,              \
                                                  const HardSumShape&, cudaStream_t);
DARTSCC_INSTANTIATE(float)
DARTSCC_INSTANTIATE(double)
DARTSCC_INSTANTIATE(__half)
DARTSCC_INSTANTIATE(__nv_bfloat16)
#undef DARTSCC_INSTANTIATE

}  // namespace cuda
}  // namespace dartscc
