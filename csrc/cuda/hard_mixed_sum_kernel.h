// hard_mixed_sum on CUDA, torch-free. outputs[m] is contiguous [count_m, inner],
// y and grad are contiguous [n, inner], weights contiguous [k] or [n, k].
// index[n] is the op sample n drew and pos[n] its row in outputs[index[n]];
// the glue validates both before launching.
#pragma once
#include "kernel_common.h"

namespace dartscc {
namespace cuda {

struct HardSumShape {
  int k = 0;
  int64_t n = 0;
  int64_t inner = 0;
  bool per_sample = false;
};

// y[n] = w[n, m] * outputs[m][pos[n]] + sum_{j != m} w[n, j], m = index[n].
template <typename T>
cudaError_t hard_mixed_sum_forward(const PtrTable<const T>& outputs, const T* weights, const int64_t* index,
                                   const int64_t* pos, T* y, const HardSumShape& s, cudaStream_t stream);

// Doubles of workspace hard_mixed_sum_backward needs.
int64_t hard_mixed_sum_backward_workspace(const HardSumShape& s);

// grad_outputs[m][pos[n]] = w[n, m] * grad[n] (every row written once), and
// grad_weights[n, j] = <grad[n], outputs[m][pos[n]]> for j = m, sum(grad[n])
// otherwise (summed over n for [k] weights), reduced in a fixed order.
template <typename T>
cudaError_t hard_mixed_sum_backward(const T* grad, const PtrTable<const T>& outputs, const T* weights,
                                    const int64_t* index, const int64_t* pos, const PtrTable<T>& grad_outputs,
                                    T* grad_weights, double* workspace, const HardSumShape& s, cudaStream_t stream);

}  // namespace cuda
}  // namespace dartscc
