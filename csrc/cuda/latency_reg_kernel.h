// The latency regulariser's CUDA kernels (torch-free; see csrc/latency_reg.cpp
// for the formulas). Host-safe: included by the glue latency_reg_cuda.cpp.
#pragma once
#include "kernel_common.h"

namespace dartscc {
namespace cuda {

// Mirrors dartscc::LatRegShape: `rows` outputs; w (S) has one row per output
// when w_batched (s_batched), else a single shared row.
struct LatRegParams {
  int64_t rows = 1;
  int64_t e = 0;
  int64_t k = 0;
  int64_t t = 0;
  bool w_batched = false;
  bool s_batched = false;
  int types[kMaxOps];  // type of candidate m in [0, t), or -1 (no cost)
};

// out[r] = sum_{e, m} S[r, type(m)] * L[e, m] * w[r, e, m]  (rows values).
template <typename T>
cudaError_t latency_reg_forward(const T* w, const T* L, const T* S, T* out, const LatRegParams& p,
                                cudaStream_t stream);

// Gradients for w ([rows or 1, e, k]), L ([e, k]) and S ([rows or 1, t]).
// `scratch` holds latency_reg_scratch(p) doubles of device memory.
template <typename T>
cudaError_t latency_reg_backward(const T* grad, const T* w, const T* L, const T* S, T* grad_w, T* grad_L,
                                 T* grad_S, double* scratch, const LatRegParams& p, cudaStream_t stream);

inline int64_t latency_reg_scratch(const LatRegParams& p) { return ((p.w_batched ? p.rows : 1) + 1) * p.k; }

}  // namespace cuda
}  // namespace dartscc
