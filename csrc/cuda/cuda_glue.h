// What the torch glue of every CUDA op shares: the mapping from torch's
// scalar types to the kernels' (at::Half -> __half, at::BFloat16 ->
// __nv_bfloat16, which have the same layout) and typed data pointers.
#pragma once
#include <ATen/ATen.h>

#include "kernel_common.h"

namespace dartscc {
namespace cuda {

template <typename scalar_t>
struct KernelType {
  using type = scalar_t;
};
template <>
struct KernelType<at::Half> {
  using type = __half;
};
template <>
struct KernelType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename scalar_t>
using kernel_t = typename KernelType<scalar_t>::type;

static_assert(sizeof(at::Half) == sizeof(__half) && alignof(at::Half) == alignof(__half),
              "at::Half and __half must share a layout");
static_assert(sizeof(at::BFloat16) == sizeof(__nv_bfloat16) && alignof(at::BFloat16) == alignof(__nv_bfloat16),
              "at::BFloat16 and __nv_bfloat16 must share a layout");

template <typename scalar_t>
const kernel_t<scalar_t>* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const kernel_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
kernel_t<scalar_t>* out_ptr(const at::Tensor& t) {
  return reinterpret_cast<kernel_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

}  // namespace cuda
}  // namespace dartscc
