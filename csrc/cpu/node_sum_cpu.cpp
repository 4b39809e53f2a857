// CPU kernel of node_sum (schema and semantics: ../node_sum.cpp).
//
// Blocks of kBlock elements, split over threads: per block the first two inputs
// are added into the output and the others added on while the block is in L1,
// so each input streams from memory once and the output is written back once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "isa.h"

namespace dartscc {
namespace {

constexpr int64_t kBlock = 2048;

template <typename T>
void sum_blocks(const std::vector<const T*>& src, T* out, int64_t numel) {
  const int64_t k = static_cast<int64_t>(src.size());
  cpu::parallel_isa((numel + kBlock - 1) / kBlock, [&](int64_t b0, int64_t b1) DARTSCC_INLINE_LAMBDA {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * kBlock, n = std::min(kBlock, numel - lo);
      T* __restrict o = out + lo;
      const T* __restrict a = src[0] + lo;
      if (k == 1) {
        for (int64_t j = 0; j < n; ++j) o[j] = a[j];
        continue;
      }
      const T* __restrict c = src[1] + lo;
      for (int64_t j = 0; j < n; ++j) o[j] = a[j] + c[j];
      for (int64_t i = 2; i < k; ++i) {
        const T* __restrict s = src[i] + lo;
        for (int64_t j = 0; j < n; ++j) o[j] += s[j];
      }
    }
  });
}

at::Tensor node_sum_cpu(at::TensorList xs_) {
  check_node_sum("node_sum", xs_);
  std::vector<at::Tensor> xs;
  for (const auto& x : xs_) xs.push_back(x.contiguous());
  at::Tensor out = at::empty(xs[0].sizes(), xs[0].options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "node_sum_cpu", [&] {
    std::vector<const scalar_t*> src;
    for (const auto& x : xs) src.push_back(x.const_data_ptr<scalar_t>());
    sum_blocks<scalar_t>(src, out.mutable_data_ptr<scalar_t>(), out.numel());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("node_sum", &node_sum_cpu);
}

}  // namespace dartscc
