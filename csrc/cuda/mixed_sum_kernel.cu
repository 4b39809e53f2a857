// mixed_sum forward and backward. Bandwidth-bound: every element of every
// tensor is read or written exactly once (the backward reads grad once for all
// k outputs), with 16-byte accesses when the pointers allow.
//
// Work is cut into tiles of kTile elements that never straddle two rows, so a
// tile's weights are one row of `weights` (kept in shared memory) and its dot
// products are one partial per (tile, op). The partials are reduced by a
// second kernel in a fixed order: the weight gradient is deterministic, with
// no atomics, whatever the grid size.
#include "kernel_common.cuh"
#include "mixed_sum_kernel.h"

namespace dartscc {
namespace cuda {
namespace {

constexpr int kPerThread = 16;                          // elements per thread per tile
constexpr int64_t kTile = int64_t(kThreads) * kPerThread;  // 4096

__host__ __device__ inline int64_t tiles_per_row(const MixedSumShape& s) { return (s.inner + kTile - 1) / kTile; }

// The VEC elements at p[e...]: one vector access when the whole vector lies
// before `end`, else element by element up to `end`, zeros after.
template <typename T, int VEC>
__device__ __forceinline__ void load(const T* p, int64_t e, int64_t end, acc_type<T> (&out)[VEC]) {
  if (e + VEC <= end) {
    const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p + e);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_acc(v.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = e + i < end ? to_acc(p[e + i]) : acc_type<T>(0);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, int64_t e, int64_t end, const acc_type<T> (&in)[VEC]) {
  if (e + VEC <= end) {
    Vec<T, VEC> v;
#pragma unroll
    for (int i = 0; i < VEC; ++i) v.v[i] = from_acc<T>(in[i]);
    *reinterpret_cast<Vec<T, VEC>*>(p + e) = v;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i)
      if (e + i < end) p[e + i] = from_acc<T>(in[i]);
  }
}

// Row `row`'s k weights into shared memory (the block's barrier included).
template <typename T>
__device__ __forceinline__ void load_weights(const T* w, int64_t row, const MixedSumShape& s, acc_type<T>* sw) {
  __syncthreads();  // nobody still reads the previous row's weights
  if (threadIdx.x < s.k) sw[threadIdx.x] = to_acc(w[(s.per_sample ? row * s.k : 0) + threadIdx.x]);
  __syncthreads();
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(PtrTable<const T> o, const T* __restrict__ w, T* __restrict__ y, MixedSumShape s) {
  using A = acc_type<T>;
  constexpr int kIters = kPerThread / VEC;
  __shared__ A sw[kMaxOps];
  __shared__ const T* so[kMaxOps];
  table_to_shared(o, s.k, so);  // load_weights synchronises
  const int64_t per_row = tiles_per_row(s);
  int64_t loaded = -1;
  for (int64_t t = blockIdx.x; t < s.rows * per_row; t += gridDim.x) {
    const int64_t row = t / per_row;
    if (row != loaded) {
      load_weights(w, row, s, sw);
      loaded = row;
    }
    const int64_t begin = row * s.inner + (t - row * per_row) * kTile, end = (row + 1) * s.inner;
    A acc[kIters][VEC];
    for (int m = 0; m < s.k; ++m) {
      const T* om = so[m];
      const A wm = sw[m];
#pragma unroll
      for (int it = 0; it < kIters; ++it) {
        const int64_t e = begin + (int64_t(it) * kThreads + threadIdx.x) * VEC;
        if (e < end) {
          A v[VEC];
          load<T, VEC>(om, e, end, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[it][i] = m == 0 ? wm * v[i] : acc[it][i] + wm * v[i];
        }
      }
    }
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int64_t e = begin + (int64_t(it) * kThreads + threadIdx.x) * VEC;
      if (e < end) store<T, VEC>(y, e, end, acc[it]);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ g, PtrTable<const T> o, const T* __restrict__ w, PtrTable<T> go,
                    double* __restrict__ partial, MixedSumShape s) {
  using A = acc_type<T>;
  constexpr int kIters = kPerThread / VEC;
  __shared__ A sw[kMaxOps];
  __shared__ double red[kWarp];
  __shared__ const T* so[kMaxOps];
  __shared__ T* sgo[kMaxOps];
  table_to_shared(o, s.k, so);  // load_weights synchronises
  table_to_shared(go, s.k, sgo);
  const int64_t per_row = tiles_per_row(s);
  int64_t loaded = -1;
  for (int64_t t = blockIdx.x; t < s.rows * per_row; t += gridDim.x) {
    const int64_t row = t / per_row;
    if (row != loaded) {
      load_weights(w, row, s, sw);
      loaded = row;
    }
    const int64_t begin = row * s.inner + (t - row * per_row) * kTile, end = (row + 1) * s.inner;
    A gv[kIters][VEC];  // grad stays in registers for all k ops
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int64_t e = begin + (int64_t(it) * kThreads + threadIdx.x) * VEC;
      if (e < end) {
        load<T, VEC>(g, e, end, gv[it]);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) gv[it][i] = A(0);
      }
    }
    for (int m = 0; m < s.k; ++m) {
      const A wm = sw[m];
      A dot = 0;
#pragma unroll
      for (int it = 0; it < kIters; ++it) {
        const int64_t e = begin + (int64_t(it) * kThreads + threadIdx.x) * VEC;
        if (e < end) {
          A v[VEC], out[VEC];
          load<T, VEC>(so[m], e, end, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            out[i] = wm * gv[it][i];
            dot += gv[it][i] * v[i];
          }
          store<T, VEC>(sgo[m], e, end, out);
        }
      }
      const double total = block_sum(static_cast<double>(dot), red);
      if (threadIdx.x == 0) partial[t * s.k + m] = total;
    }
  }
}

// 16-byte accesses need every pointer 16-byte aligned, and (with per-sample
// weights) rows that start on a vector boundary, so no vector spans two rows.
template <typename T>
bool can_vectorize(const MixedSumShape& s, const void* a, const void* b, const PtrTable<const T>& o,
                   const PtrTable<T>* go) {
  if (s.rows != 1 && s.inner % vec_width<T>() != 0) return false;
  if (!aligned16(a) || (b != nullptr && !aligned16(b))) return false;
  for (int m = 0; m < s.k; ++m) {
    if (!aligned16(o.p[m])) return false;
    if (go != nullptr && !aligned16(go->p[m])) return false;
  }
  return true;
}

}  // namespace

template <typename T>
cudaError_t mixed_sum_forward(const PtrTable<const T>& outputs, const T* weights, T* y, const MixedSumShape& s,
                              cudaStream_t stream) {
  const int64_t tiles = s.rows * tiles_per_row(s);
  if (tiles == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(tiles, kThreads, &grid);
  if (err != cudaSuccess) return err;
  if (can_vectorize<T>(s, y, nullptr, outputs, nullptr)) {
    forward_kernel<T, vec_width<T>()><<<grid, kThreads, 0, stream>>>(outputs, weights, y, s);
  } else {
    forward_kernel<T, 1><<<grid, kThreads, 0, stream>>>(outputs, weights, y, s);
  }
  return cudaGetLastError();
}

int64_t mixed_sum_backward_workspace(const MixedSumShape& s) { return s.rows * tiles_per_row(s) * s.k; }

template <typename T>
cudaError_t mixed_sum_backward(const T* grad, const PtrTable<const T>& outputs, const T* weights,
                               const PtrTable<T>& grad_outputs, T* grad_weights, double* workspace,
                               const MixedSumShape& s, cudaStream_t stream) {
  const int64_t per_row = tiles_per_row(s);
  if (s.rows * per_row == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(s.rows * per_row, kThreads, &grid);
  if (err != cudaSuccess) return err;
  if (can_vectorize<T>(s, grad, nullptr, outputs, &grad_outputs)) {
    backward_kernel<T, vec_width<T>()><<<grid, kThreads, 0, stream>>>(grad, outputs, weights, grad_outputs,
                                                                       workspace, s);
  } else {
    backward_kernel<T, 1><<<grid, kThreads, 0, stream>>>(grad, outputs, weights, grad_outputs, workspace, s);
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // Per-edge weights have rows == 1: one output row summing every tile.
  return reduce_partials<T>(workspace, grad_weights, s.rows, per_row, s.k, stream);
}

#define DARTSCC_INSTANTIATE(T)                                                                               \
  template cudaError_t mixed_sum_forward<T>(const PtrTable<const T>&, const T*, T*, const MixedSumShape&,    \
                                            cudaStream_t);                                                   \
  template cudaError_t mixed_sum_backward<T>(const T*, const PtrTable<const T>&, const T*, const PtrTable<T>&, \
                                             T*, double*, const MixedSumShape&, cudaStream_t);
DARTSCC_INSTANTIATE(float)
DARTSCC_INSTANTIATE(double)
DARTSCC_INSTANTIATE(__half)
DARTSCC_INSTANTIATE(__nv_bfloat16)
#undef DARTSCC_INSTANTIATE

}  // namespace cuda
}  // namespace dartscc
