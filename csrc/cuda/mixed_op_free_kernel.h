// mixed_op_free on CUDA, torch-free. Tensors are 4-D strided views, each in
// its own layout (NCHW or NHWC); stats and the BatchNorm terms are contiguous
// in the accumulation type (float for the half types), as the op's `stats`
// output is.
#pragma once
#include "kernel_common.h"

namespace dartscc {
namespace cuda {

// [N, C, H, W] with strides in elements.
template <typename T>
struct View4 {
  T* data;
  int64_t s[4];
};

// One candidate slot: its code (common/primitives.h: PrimCode), for a pool
// its row of `stats`, for a kParam slot its precomputed output [N, C, Ho, Wo].
template <typename T>
struct FreeSlot {
  int code;
  int pool;
  View4<const T> src;
};

// The forward problem, filled by the glue (value-initialise it: unused slots
// must be zero). No member initialisers: kernels copy parts of it into
// shared memory.
template <typename T>
struct FreeProblem {
  int64_t n, c, h, w, ho, wo, stride;
  int k;
  int pools;  // P
  bool per_sample;
  double eps;
  View4<const T> x;
  const T* weights;  // contiguous [k] or [N, k]
  FreeSlot<T> slots[kMaxOps];
  int pool_slot[kMaxOps];  // slot of pool q, q < pools
};

// stats [P, 2, C] <- per pool slot and channel, the batch mean and biased
// variance of the pool's output. Needs n * ho * wo > 0.
template <typename T>
cudaError_t mixed_op_free_batch_stats(const FreeProblem<T>& p, acc_type<T>* stats, cudaStream_t stream);

// y = sum_m w[n, m] * slot_m(x), the pools normalised with `stats` [P, 2, C].
template <typename T>
cudaError_t mixed_op_free_forward(const FreeProblem<T>& p, const acc_type<T>* stats, const View4<T>& y,
                                  bool y_channels_last, cudaStream_t stream);

template <typename T>
struct FreeGrads {
  View4<const T> grad;  // [N, C, Ho, Wo]
  View4<T> gx;          // [N, C, H, W], every element written
  bool gx_channels_last;
  View4<T> gslot[kMaxOps];  // by slot: the grad of each kParam slot's output
  T* gw;                    // contiguous, the weights' shape
};

// The backward, the BatchNorm backward folded in (stats_fixed: `stats` were
// given, not batch statistics, so they carry no gradient). Workspaces:
// bn_terms 2 * P * C accumulation-type values, partial N * C * k doubles
// (the per-plane weight-gradient dots, reduced in a fixed order). Needs
// x non-empty.
template <typename T>
cudaError_t mixed_op_free_backward(const FreeProblem<T>& p, const acc_type<T>* stats, bool stats_fixed,
                                   const FreeGrads<T>& g, acc_type<T>* bn_terms, double* partial,
                                   cudaStream_t stream);

}  // namespace cuda
}  // namespace dartscc
