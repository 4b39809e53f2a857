// Types shared by the torch-free CUDA kernels and their torch glue. Host-safe:
// the glue (*_cuda.cpp, built by the host compiler) includes it through the
// kernels' headers, so nothing here may need nvcc.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/primitives.h"

namespace dartscc {
namespace cuda {

// The accumulation type: float for the half types (as at::opmath_type), the
// type itself for float and double.
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<__half> {
  using type = float;
};
template <>
struct AccType<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using acc_type = typename AccType<T>::type;

// The k candidate pointers, passed to a kernel by value (kernel parameter
// space), so no device-side table has to be allocated and copied per call.
template <typename T>
struct PtrTable {
  T* p[kMaxOps];
};

}  // namespace cuda
}  // namespace dartscc
