#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace dartscc {

struct HardShape {
  int64_t k = 0;
  int64_t n = 0;        // samples
  int64_t inner = 0;    // elements per sample
  bool per_sample = false;
  std::vector<int64_t> out_shape;
};

// Checks shapes, dtypes and devices (not the index values: the kernels do that,
// on the device where the index lives).
HardShape check_hard_mixed_sum(const char* op, at::TensorList outputs, const at::Tensor& weights,
                               const at::Tensor& index);

}  // namespace dartscc
