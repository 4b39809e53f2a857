// CPU kernels of batch_norm_train (schema and semantics: ../batch_norm_train.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "plane_ops.h"

namespace dartscc {
namespace {

// 1 / sqrt(var + eps) from the variance as stored (rounded to its dtype), so the
// backward, which sees only the stored variance, normalises with the same value.
inline double inv_std(double stored_var, double eps) { return 1.0 / std::sqrt(stored_var + eps); }

template <typename scalar_t>
void forward_kernel(const scalar_t* x, scalar_t* y, const BnShape& s, double eps, scalar_t* mean_out,
                    scalar_t* var_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t planes = s.n * s.c, m = s.m;
  std::vector<double> pm(planes), pm2(planes);
  // Pass 1: each plane's mean and sum of squared deviations, planes in memory order.
  cpu::parallel_isa(planes, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t* p = x + i * m;
      const acc_t mu = cpu::sum(p, m) / static_cast<acc_t>(m);
      pm[i] = static_cast<double>(mu);
      pm2[i] = static_cast<double>(cpu::sq_dev_sum(p, mu, m));
    }
  });
  // Per channel, the planes' partials merged in sample order.
  std::vector<acc_t> mean(s.c), invstd(s.c);
  for (int64_t c = 0; c < s.c; ++c) {
    double mu, v;
    cpu::merge_plane_stats(pm.data() + c, pm2.data() + c, s.c, s.n, m, mu, v);
    mean_out[c] = static_cast<scalar_t>(mu);
    var_out[c] = static_cast<scalar_t>(v);
    mean[c] = static_cast<acc_t>(mean_out[c]);
    invstd[c] = static_cast<acc_t>(inv_std(static_cast<double>(var_out[c]), eps));
  }
  // Pass 2: y = (x - mean) * invstd.
  cpu::parallel_isa(planes, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t mu = mean[i % s.c], is = invstd[i % s.c];
      const scalar_t* __restrict src = x + i * m;
      scalar_t* __restrict dst = y + i * m;
      for (int64_t j = 0; j < m; ++j) dst[j] = (src[j] - mu) * is;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cpu(const at::Tensor& x_, double eps) {
  const BnShape s = check_batch_norm_train("batch_norm_train", x_, eps);
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({s.c}, x.options()), var = at::empty({s.c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_cpu", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), s, eps,
                             mean.mutable_data_ptr<scalar_t>(), var.mutable_data_ptr<scalar_t>());
  });
  return {y, mean, var};
}

at::Tensor batch_norm_train_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& var, double eps) {
  const char* op = "batch_norm_train_backward";
  const BnShape s = check_batch_norm_train(op, x, eps);
  check_grad(op, grad, x.sizes(), x);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean}, {"var", var}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == s.c, op, ": ", name, " must have shape [", s.c, "], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have dtype ", x.scalar_type(), ", got ",
                t.scalar_type());
    check_same_device(op, name, t, x);
  }
  at::Tensor invstd = at::empty_like(var);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_backward_cpu", [&] {
    const at::Tensor v = var.contiguous();
    const scalar_t* pv = v.const_data_ptr<scalar_t>();
    scalar_t* pi = invstd.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < s.c; ++c) pi[c] = static_cast<scalar_t>(inv_std(static_cast<double>(pv[c]), eps));
  });
  return std::get<0>(at::native_batch_norm_backward(grad.contiguous(), x.contiguous(), {}, {}, {}, mean, invstd,
                                                    /*train=*/true, eps, {true, false, false}));
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_train_backward", &batch_norm_train_backward_cpu);
}

}  // namespace dartscc
