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

// relu_dw_pw_conv: x [N, C, H, W], dw_weight [C, 1, K, K] with odd K,
// pw_weight [C_out, C, 1, 1]; "same" padding dilation * (K - 1) / 2.
struct DwPwShape {
  int64_t n = 0, c = 0, co = 0, h = 0, w = 0;
  int64_t k = 1, stride = 1, dilation = 1, pad = 0;
  int64_t ho = 0, wo = 0;  // output plane
  int64_t hp = 0, wp = 0;  // zero-padded input plane
};
DwPwShape check_relu_dw_pw_conv(const char* op, const at::Tensor& x, const at::Tensor& dw_weight,
                                const at::Tensor& pw_weight, int64_t stride, int64_t dilation);

// batch_norm_train: x [N, C, *] float32/float64 with more than one value per
// channel, eps > 0 and finite. Returns (N, C, plane size).
struct BnShape {
  int64_t n = 0, c = 0, m = 1;
};
BnShape check_batch_norm_train(const char* op, const at::Tensor& x, double eps);

void check_float_dtype(const char* op, const char* name, const at::Tensor& t);
// node_sum: one or more float32/float64 tensors of one shape on one device.
void check_node_sum(const char* op, at::TensorList xs);

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref);

}  // namespace dartscc
