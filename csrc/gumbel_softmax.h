#pragma once
#include <ATen/ATen.h>

namespace dartscc {
// Validates the arguments; returns the seed.
uint64_t check_gumbel_softmax(const at::Tensor& logits, const at::Tensor& seed, double tau);
void check_gumbel_softmax_backward(const at::Tensor& grad, const at::Tensor& soft, double tau);
}  // namespace dartscc
