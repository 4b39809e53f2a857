// mixed_sum on CUDA, torch-free: raw pointers, sizes and a stream. The k
// candidate outputs (and y, grad, the grads of the outputs) share one dense
// layout, `rows` blocks of `inner` elements; see check_mixed_sum and
// same_layout in csrc/checks.h. Weights are contiguous [k] (rows == 1) or
// [rows, k] (per_sample).
#pragma once
#include "kernel_common.h"

namespace dartscc {
namespace cuda {

struct MixedSumShape {
  int k = 0;
  int64_t rows = 1;
  int64_t inner = 0;
  bool per_sample = false;
};

// y = sum_m w[row, m] * outputs[m], one pass over memory.
template <typename T>
cudaError_t mixed_sum_forward(const PtrTable<const T>& outputs, const T* weights, T* y, const MixedSumShape& s,
                              cudaStream_t stream);

// Doubles of workspace mixed_sum_backward needs.
int64_t mixed_sum_backward_workspace(const MixedSumShape& s);

// grad_outputs[m] = w[row, m] * grad and grad_weights[row, m] = <grad, outputs[m]>
// over the row (over everything for [k] weights), in one pass over memory; the
// dot products go through per-tile partials in `workspace`, reduced in a fixed
// order, so the result is deterministic.
template <typename T>
cudaError_t mixed_sum_backward(const T* grad, const PtrTable<const T>& outputs, const T* weights,
                               const PtrTable<T>& grad_outputs, T* grad_weights, double* workspace,
                               const MixedSumShape& s, cudaStream_t stream);

}  // namespace cuda
}  // namespace dartscc
