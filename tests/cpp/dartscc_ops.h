// Typed handles to the dartscc_fast ops through the dispatcher, as a C++
// caller with no Python would use them. The schemas live in csrc/<op>.cpp;
// typed() checks these signatures against them.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>
#include <vector>

namespace ops {

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline at::Tensor mixed_sum(at::TensorList outputs, const at::Tensor& weights) {
  static const auto op = handle<at::Tensor(at::TensorList, const at::Tensor&)>("dartscc_fast::mixed_sum");
  return op.call(outputs, weights);
}

inline std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward(const at::Tensor& grad,
                                                                           at::TensorList outputs,
                                                                           const at::Tensor& weights) {
  static const auto op =
      handle<std::tuple<std::vector<at::Tensor>, at::Tensor>(const at::Tensor&, at::TensorList, const at::Tensor&)>(
          "dartscc_fast::mixed_sum_backward");
  return op.call(grad, outputs, weights);
}

inline std::tuple<at::Tensor, at::Tensor> gumbel_softmax(const at::Tensor& logits, const at::Tensor& seed,
                                                         double tau, bool hard) {
  static const auto op = handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, bool)>(
      "dartscc_fast::gumbel_softmax");
  return op.call(logits, seed, tau, hard);
}

inline at::Tensor gumbel_softmax_backward(const at::Tensor& grad, const at::Tensor& soft, double tau) {
  static const auto op =
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("dartscc_fast::gumbel_softmax_backward");
  return op.call(grad, soft, tau);
}

inline at::Tensor hard_mixed_sum(at::TensorList outputs, const at::Tensor& weights, const at::Tensor& index) {
  static const auto op =
      handle<at::Tensor(at::TensorList, const at::Tensor&, const at::Tensor&)>("dartscc_fast::hard_mixed_sum");
  return op.call(outputs, weights, index);
}

inline std::tuple<std::vector<at::Tensor>, at::Tensor> hard_mixed_sum_backward(const at::Tensor& grad,
                                                                                at::TensorList outputs,
                                                                                const at::Tensor& weights,
                                                                                const at::Tensor& index) {
  static const auto op = handle<std::tuple<std::vector<at::Tensor>, at::Tensor>(
      const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&)>("dartscc_fast::hard_mixed_sum_backward");
  return op.call(grad, outputs, weights, index);
}

inline std::tuple<at::Tensor, at::Tensor> mixed_op_free(const at::Tensor& x, at::TensorList param_outputs,
                                                        const at::Tensor& weights, at::IntArrayRef prims,
                                                        int64_t stride, double eps,
                                                        const std::optional<at::Tensor>& bn_stats) {
  static const auto op =
      handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, const at::Tensor&, at::IntArrayRef,
                                                int64_t, double, const std::optional<at::Tensor>&)>(
          "dartscc_fast::mixed_op_free");
  return op.call(x, param_outputs, weights, prims, stride, eps, bn_stats);
}

inline std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> mixed_op_free_backward(
    const at::Tensor& grad, const at::Tensor& x, at::TensorList param_outputs, const at::Tensor& weights,
    at::IntArrayRef prims, int64_t stride, double eps, const at::Tensor& stats, bool stats_fixed) {
  static const auto op = handle<std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>(
      const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&, at::IntArrayRef, int64_t, double,
      const at::Tensor&, bool)>("dartscc_fast::mixed_op_free_backward");
  return op.call(grad, x, param_outputs, weights, prims, stride, eps, stats, stats_fixed);
}

inline at::Tensor relu_dw_pw_conv(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, int64_t stride,
                                  int64_t dilation) {
  static const auto op = handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>(
      "dartscc_fast::relu_dw_pw_conv");
  return op.call(x, dw, pw, stride, dilation);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_dw_pw_conv_backward(const at::Tensor& grad,
                                                                               const at::Tensor& x,
                                                                               const at::Tensor& dw,
                                                                               const at::Tensor& pw, int64_t stride,
                                                                               int64_t dilation) {
  static const auto op = handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>(
      "dartscc_fast::relu_dw_pw_conv_backward");
  return op.call(grad, x, dw, pw, stride, dilation);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train(const at::Tensor& x, double eps) {
  static const auto op = handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, double)>(
      "dartscc_fast::batch_norm_train");
  return op.call(x, eps);
}

inline at::Tensor batch_norm_train_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                            const at::Tensor& var, double eps) {
  static const auto op = handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, double)>("dartscc_fast::batch_norm_train_backward");
  return op.call(grad, x, mean, var, eps);
}

inline at::Tensor node_sum(at::TensorList xs) {
  static const auto op = handle<at::Tensor(at::TensorList)>("dartscc_fast::node_sum");
  return op.call(xs);
}

}  // namespace ops
