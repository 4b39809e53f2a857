#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"

namespace dartscc {
namespace {

// Fixed-size chunks (not one per thread) keep the reduction order, and so the
// weight gradient, independent of the thread count.
constexpr int64_t kChunk = 16384;
constexpr int64_t kBlock = 256;  // the accumulator lives in registers/L1

template <typename scalar_t>
void forward_kernel(const std::vector<const scalar_t*>& o, const scalar_t* w, const MixedShape& s,
                    scalar_t* y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t k = s.k, chunks = (s.inner + kChunk - 1) / kChunk;
  at::parallel_for(0, s.rows * chunks, 1, [&](int64_t begin, int64_t end) {
    acc_t wl[kMaxOps];
    acc_t buf[kBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / chunks, c = t % chunks;
      for (int64_t m = 0; m < k; ++m) wl[m] = static_cast<acc_t>(w[s.per_sample ? row * k + m : m]);
      const int64_t start = row * s.inner + c * kChunk;
      const int64_t stop = start + std::min(kChunk, s.inner - c * kChunk);
      for (int64_t b = start; b < stop; b += kBlock) {
        const int64_t len = std::min(kBlock, stop - b);
        const scalar_t* o0 = o[0] + b;
        for (int64_t j = 0; j < len; ++j) buf[j] = wl[0] * static_cast<acc_t>(o0[j]);
        for (int64_t m = 1; m < k; ++m) {
          const scalar_t* om = o[m] + b;
          const acc_t wm = wl[m];
          for (int64_t j = 0; j < len; ++j) buf[j] += wm * static_cast<acc_t>(om[j]);
        }
        scalar_t* yb = y + b;
        for (int64_t j = 0; j < len; ++j) yb[j] = static_cast<scalar_t>(buf[j]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* g, const std::vector<const scalar_t*>& o, const scalar_t* w,
                     const MixedShape& s, const std::vector<scalar_t*>& go, scalar_t* gw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t k = s.k, chunks = (s.inner + kChunk - 1) / kChunk;
  const int64_t tasks = s.rows * chunks;
  std::vector<double> partial(static_cast<size_t>(tasks * k), 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    acc_t wl[kMaxOps];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / chunks, c = t % chunks;
      for (int64_t m = 0; m < k; ++m) wl[m] = static_cast<acc_t>(w[s.per_sample ? row * k + m : m]);
      const int64_t start = row * s.inner + c * kChunk;
      const int64_t stop = start + std::min(kChunk, s.inner - c * kChunk);
      double* part = partial.data() + t * k;
      for (int64_t b = start; b < stop; b += kBlock) {
        const int64_t len = std::min(kBlock, stop - b);
        const scalar_t* __restrict gb = g + b;
        for (int64_t m = 0; m < k; ++m) {
          const scalar_t* __restrict om = o[m] + b;
          scalar_t* __restrict gom = go[m] + b;
          const acc_t wm = wl[m];
          // independent lanes: vectorised without reassociating the sum
          constexpr int L = 16;
          acc_t lanes[L] = {};
          int64_t j = 0;
          for (; j + L <= len; j += L)
            for (int l = 0; l < L; ++l) {
              const acc_t gj = static_cast<acc_t>(gb[j + l]);
              gom[j + l] = static_cast<scalar_t>(wm * gj);
              lanes[l] += gj * static_cast<acc_t>(om[j + l]);
            }
          acc_t dot = 0;
          for (; j < len; ++j) {
            const acc_t gj = static_cast<acc_t>(gb[j]);
            gom[j] = static_cast<scalar_t>(wm * gj);
            dot += gj * static_cast<acc_t>(om[j]);
          }
          for (int l = 0; l < L; ++l) dot += lanes[l];
          part[m] += static_cast<double>(dot);
        }
      }
    }
  });
  // Reduce the chunk partials in a fixed order.
  const int64_t out_rows = s.per_sample ? s.rows : 1;
  for (int64_t r = 0; r < out_rows; ++r) {
    for (int64_t m = 0; m < k; ++m) {
      double acc = 0.0;
      const int64_t t0 = s.per_sample ? r * chunks : 0, t1 = s.per_sample ? (r + 1) * chunks : tasks;
      for (int64_t t = t0; t < t1; ++t) acc += partial[t * k + m];
      gw[r * k + m] = static_cast<scalar_t>(acc);
    }
  }
}

at::Tensor mixed_sum_cpu(at::TensorList outputs, const at::Tensor& weights) {
  const MixedShape s = check_mixed_sum("mixed_sum", outputs, weights);
  auto outs = same_layout(outputs, s.per_sample);
  auto w = weights.contiguous();
  at::Tensor y = at::empty_like(outs[0], at::MemoryFormat::Preserve);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cpu", [&] {
    std::vector<const scalar_t*> o;
    for (const auto& t : outs) o.push_back(t.const_data_ptr<scalar_t>());
    forward_kernel<scalar_t>(o, w.const_data_ptr<scalar_t>(), s, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad,
                                                                        at::TensorList outputs,
                                                                        const at::Tensor& weights) {
  const MixedShape s = check_mixed_sum("mixed_sum_backward", outputs, weights);
  check_grad("mixed_sum_backward", grad, outputs[0].sizes(), outputs[0]);
  auto outs = same_layout(outputs, s.per_sample);
  // grad must follow the outputs' layout; it usually does already.
  at::Tensor g = grad.strides() == outs[0].strides() ? grad : grad.contiguous();
  if (g.strides() != outs[0].strides()) {
    for (auto& t : outs) t = t.contiguous();
  }
  auto w = weights.contiguous();
  std::vector<at::Tensor> grad_outs;
  for (const auto& t : outs) grad_outs.push_back(at::empty_like(t, at::MemoryFormat::Preserve));
  at::Tensor grad_w = at::zeros_like(w);
  if (g.numel() == 0) {
    for (auto& t : grad_outs) t.zero_();
    return {grad_outs, grad_w};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cpu", [&] {
    std::vector<const scalar_t*> o;
    std::vector<scalar_t*> go;
    for (const auto& t : outs) o.push_back(t.const_data_ptr<scalar_t>());
    for (auto& t : grad_outs) go.push_back(t.mutable_data_ptr<scalar_t>());
    backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), o, w.const_data_ptr<scalar_t>(), s, go,
                              grad_w.mutable_data_ptr<scalar_t>());
  });
  return {grad_outs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace dartscc
