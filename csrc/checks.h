// Argument checks shared by every op's CPU and CUDA implementation, so both
// backends reject bad input with the same message.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "common/primitives.h"

namespace dartscc {

// The problem as the kernels see it: `rows` independent blocks of `inner`
// elements (rows = N for per-sample weights [N, k], 1 for per-edge weights [k]).
struct MixedShape {
  int64_t k = 0;
  int64_t rows = 1;
  int64_t inner = 0;
  bool per_sample = false;
};

// outputs: k tensors of one shape, dtype and device; weights [k] or [N, k].
MixedShape check_mixed_sum(const char* op, at::TensorList outputs, const at::Tensor& weights);

// The k outputs laid out alike in memory (each sample one contiguous block):
// the tensors themselves when they already are, else contiguous copies.
std::vector<at::Tensor> same_layout(at::TensorList outputs, bool per_sample);

// grad of a backward op: the given shape, the dtype and device of `like`.
void check_grad(const char* op, const at::Tensor& grad, at::IntArrayRef shape, const at::Tensor& like);

void check_float_dtype(const char* op, const char* name, const at::Tensor& t);
void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref);

}  // namespace dartscc
