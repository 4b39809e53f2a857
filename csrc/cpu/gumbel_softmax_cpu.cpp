#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common/philox.h"
#include "../gumbel_softmax.h"

namespace dartscc {
namespace {

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_cpu(const at::Tensor& logits_in, const at::Tensor& seed_t,
                                                      double tau, bool hard) {
  const uint64_t seed = check_gumbel_softmax(logits_in, seed_t, tau);
  at::Tensor logits = logits_in.contiguous();
  at::Tensor y = at::empty_like(logits);
  at::Tensor soft = at::empty_like(logits);
  const int64_t k = logits.size(-1), rows = k == 0 ? 0 : logits.numel() / k;
  if (logits.numel() == 0) return {y, soft};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    scalar_t* ps = soft.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> z(static_cast<size_t>(k));
      for (int64_t r = begin; r < end; ++r) {
        acc_t zmax = -INFINITY;
        int64_t arg = 0;
        for (int64_t j = 0; j < k; ++j) {
          const uint64_t i = static_cast<uint64_t>(r * k + j);
          z[j] = (static_cast<acc_t>(l[i]) + static_cast<acc_t>(gumbel_noise(seed, i))) / static_cast<acc_t>(tau);
          if (z[j] > zmax || std::isnan(z[j])) {
            zmax = z[j];
            arg = j;
          }
        }
        acc_t sum = 0;
        for (int64_t j = 0; j < k; ++j) {
          z[j] = std::exp(z[j] - zmax);
          sum += z[j];
        }
        for (int64_t j = 0; j < k; ++j) {
          const acc_t p = z[j] / sum;
          ps[r * k + j] = static_cast<scalar_t>(p);
          // hard: the one-hot, except that a NaN row (a NaN or an all -inf logit) stays NaN, as the reference
          py[r * k + j] = hard && !std::isnan(p) ? static_cast<scalar_t>(j == arg ? 1 : 0) : static_cast<scalar_t>(p);
        }
      }
    });
  });
  return {y, soft};
}

at::Tensor gumbel_softmax_backward_cpu(const at::Tensor& grad_in, const at::Tensor& soft_in, double tau) {
  check_gumbel_softmax_backward(grad_in, soft_in, tau);
  at::Tensor grad = grad_in.contiguous(), soft = soft_in.contiguous();
  at::Tensor out = at::empty_like(soft);
  if (soft.numel() == 0) return out;
  const int64_t k = soft.size(-1), rows = soft.numel() / k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, soft.scalar_type(), "gumbel_softmax_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* s = soft.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        acc_t dot = 0;
        for (int64_t j = 0; j < k; ++j) dot += static_cast<acc_t>(g[r * k + j]) * static_cast<acc_t>(s[r * k + j]);
        for (int64_t j = 0; j < k; ++j) {
          const acc_t sj = static_cast<acc_t>(s[r * k + j]);
          o[r * k + j] = static_cast<scalar_t>(sj * (static_cast<acc_t>(g[r * k + j]) - dot) * inv_tau);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cpu);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cpu);
}

}  // namespace dartscc
