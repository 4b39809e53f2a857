#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "checks.h"

namespace dartscc {

// The most op types S may have (the CUDA kernels keep one accumulator per type
// in registers, so the bound is a compile-time one).
constexpr int64_t kMaxTypes = 16;

// The problem as the kernels see it. `rows` is the number of outputs: N when
// w or S is per sample, else 1; w (S) has one row per output when w_batched
// (s_batched), else one row shared by all.
struct LatRegShape {
  int64_t rows = 1;
  int64_t e = 0;
  int64_t k = 0;
  int64_t t = 0;
  bool w_batched = false;
  bool s_batched = false;
  bool out_batched = false;
  int types[kMaxOps];  // type of candidate m, -1 for none (no cost)
};

// w [E, k] or [N, E, k]; L [E, k]; S [T] or [N, T]; type_index: k ints in [-1, T).
LatRegShape check_latency_reg(const char* op, const at::Tensor& w, const at::Tensor& L, const at::Tensor& S,
                              at::IntArrayRef type_index);

// grad: [] (scalar output) or [N]; returns the shape again.
LatRegShape check_latency_reg_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& L,
                                       const at::Tensor& S, at::IntArrayRef type_index);

}  // namespace dartscc
