#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace dartscc {

struct FreeShape {
  int64_t k = 0, n = 0, c = 0, h = 0, w = 0, ho = 0, wo = 0, stride = 1;
  bool per_sample = false;
  std::vector<int64_t> pool_slots;   // slot index of each pool, in slot order
  std::vector<int64_t> param_slots;  // slot index of each param output
};

FreeShape check_mixed_op_free(const char* op, const at::Tensor& x, at::TensorList param_outputs,
                              const at::Tensor& weights, at::IntArrayRef prims, int64_t stride, double eps);
void check_stats(const char* op, const char* name, const at::Tensor& stats, const FreeShape& s,
                 const at::Tensor& x);

// The memory format the op gives its results: channels_last when the input is
// channels_last (and not also contiguous), else contiguous. Mirrored in ops.py.
at::MemoryFormat result_format(const at::Tensor& t);

}  // namespace dartscc
