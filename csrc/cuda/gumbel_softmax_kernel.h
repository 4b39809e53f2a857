// gumbel_softmax on CUDA, torch-free. logits, y, soft and grad are contiguous
// [rows, k]; the noise of element i is gumbel_noise(seed, i) (common/philox.h),
// the same draw as the CPU kernel's.
#pragma once
#include "kernel_common.h"

namespace dartscc {
namespace cuda {

// soft = softmax((logits + G) / tau) per row; y = soft, or with `hard` the
// one-hot of the row's argmax (the first maximum; a NaN counts as the maximum).
template <typename T>
cudaError_t gumbel_softmax_forward(const T* logits, T* y, T* soft, int64_t rows, int64_t k, uint64_t seed,
                                   double tau, bool hard, cudaStream_t stream);

// out = soft * (grad - sum(grad * soft)) / tau per row.
template <typename T>
cudaError_t gumbel_softmax_backward(const T* grad, const T* soft, T* out, int64_t rows, int64_t k, double tau,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace dartscc
